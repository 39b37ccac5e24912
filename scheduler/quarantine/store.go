package quarantine

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/names"
)

// DefaultPrefix is where quarantines live in Consul KV: one key per job,
// DefaultPrefix + job id.
const DefaultPrefix = "modelnodes/quarantine/"

// Record is one quarantine: why the model is held stopped.
type Record struct {
	JobID string `json:"job_id"`
	// Key is the model's key (jobs.Key: its crunch and model id), which
	// does not change when its job is renamed (jobs.AssignNames: a name
	// contested by another crunch): the model stays quarantined under
	// whatever job id it has.
	Key    string `json:"key,omitempty"`
	Crunch string `json:"crunch"`
	// ModelID is the model's full id.
	ModelID string `json:"model_id"`
	// Code is the failure code that quarantined it, Reason the
	// coordinator's own words (failure_reason, shortened), Reports how
	// many reports of the model led to it.
	Code    string `json:"code"`
	Reason  string `json:"reason,omitempty"`
	Reports int    `json:"reports"`
	// Coordinator is the reporting coordinator's key hash (the on-chain
	// hash its certificate matched), Peer its address.
	Coordinator string    `json:"coordinator"`
	Peer        string    `json:"peer,omitempty"`
	At          time.Time `json:"at"`
	// Submission fingerprints the authorization the model was quarantined
	// under (Fingerprint): a new submission ends the hold.
	Submission string `json:"submission"`
	// Index is the record's Consul modify index (deletes are
	// check-and-set on it).
	Index uint64 `json:"-"`
}

// Fingerprint identifies the submission an authorization runs: the model's
// whole authorization except its desired state, its crunch's coordinator
// keys and the name the scheduler gave its job, so that pausing a model or rotating the coordinator's
// key does not end a quarantine, while new code, resources or resources
// limits do.
func Fingerprint(m jobs.Model) string {
	m.Running = false
	// The job's name is the scheduler's choice, not the submission's: a
	// rename (another crunch contesting the model id) ends nothing.
	m.Name = ""
	m.Coordinator, m.CertHash, m.CertHashSecondary = "", "", ""
	b, _ := json.Marshal(m)
	sum := sha256.Sum256(b)
	return names.Base32.EncodeToString(sum[:15])
}

// Store keeps quarantines in Consul KV. Every instance of the scheduler
// reads the same records, so a hold survives a change of leader and
// whoever serves the coordinators' WebSocket can create one.
type Store struct {
	KV *consulapi.KV
	// Prefix is the records' key prefix (default DefaultPrefix).
	Prefix string
	Logger hclog.Logger

	mu     sync.Mutex
	cache  map[string]Record // the last listing, kept current by this store's own writes
	listed bool
}

func (s *Store) prefix() string {
	if s.Prefix == "" {
		return DefaultPrefix
	}
	return s.Prefix
}

func (s *Store) log() hclog.Logger {
	if s.Logger == nil {
		return hclog.NewNullLogger()
	}
	return s.Logger
}

// ErrExists is Create's error when the job is quarantined already.
var ErrExists = errors.New("the model is quarantined already")

// List reads every record, by job id. A record that does not decode still
// holds its job (Code "UNREADABLE"): a damaged key must not start a model.
func (s *Store) List(ctx context.Context) (map[string]Record, error) {
	pairs, _, err := s.KV.List(s.prefix(), (&consulapi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("list quarantines (consul kv %s): %w", s.prefix(), err)
	}
	out := s.decode(pairs)
	s.mu.Lock()
	s.cache, s.listed = out, true
	s.mu.Unlock()
	return maps.Clone(out), nil
}

func (s *Store) decode(pairs consulapi.KVPairs) map[string]Record {
	out := make(map[string]Record, len(pairs))
	for _, p := range pairs {
		id := strings.TrimPrefix(p.Key, s.prefix())
		if id == "" || strings.Contains(id, "/") {
			continue
		}
		var r Record
		if err := json.Unmarshal(p.Value, &r); err != nil || r.JobID != id {
			s.log().Error("a quarantine record does not decode; its model stays stopped until an operator lifts it", "key", p.Key, "error", err)
			r = Record{JobID: id, Code: "UNREADABLE"}
		}
		r.Index = p.ModifyIndex
		out[id] = r
	}
	return out
}

// Cached returns the last listing (List, Watch, and this store's own
// writes since), and whether there was one.
func (s *Store) Cached() (map[string]Record, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.cache), s.listed
}

// Create writes r unless its job is quarantined already (ErrExists).
func (s *Store) Create(ctx context.Context, r Record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	ok, _, err := s.KV.CAS(&consulapi.KVPair{Key: s.prefix() + r.JobID, Value: b, ModifyIndex: 0}, (&consulapi.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("quarantine %s (consul kv): %w", r.JobID, err)
	}
	if !ok {
		return fmt.Errorf("quarantine %s: %w", r.JobID, ErrExists)
	}
	s.mu.Lock()
	if s.cache == nil {
		s.cache = map[string]Record{}
	}
	s.cache[r.JobID] = r
	s.mu.Unlock()
	return nil
}

// Delete ends the quarantine of jobID if its record is still at index (0:
// whatever it is); false when it changed meanwhile.
func (s *Store) Delete(ctx context.Context, jobID string, index uint64) (bool, error) {
	key := s.prefix() + jobID
	wo := (&consulapi.WriteOptions{}).WithContext(ctx)
	var ok bool
	var err error
	if index == 0 {
		_, err = s.KV.Delete(key, wo)
		ok = err == nil
	} else {
		ok, _, err = s.KV.DeleteCAS(&consulapi.KVPair{Key: key, ModifyIndex: index}, wo)
	}
	if err != nil {
		return false, fmt.Errorf("lift the quarantine of %s (consul kv): %w", jobID, err)
	}
	if ok {
		s.mu.Lock()
		delete(s.cache, jobID)
		s.mu.Unlock()
	}
	return ok, nil
}

// Watch follows the records with blocking queries until ctx ends, keeping
// Cached current, and calls onChange after every change (so the leader
// reconciles as soon as another instance quarantines or lifts a model).
func (s *Store) Watch(ctx context.Context, onChange func()) {
	var index uint64
	backoff := time.Second
	for ctx.Err() == nil {
		q := (&consulapi.QueryOptions{WaitIndex: index, WaitTime: 5 * time.Minute}).WithContext(ctx)
		pairs, meta, err := s.KV.List(s.prefix(), q)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			s.log().Warn("watching the quarantines in Consul KV; retrying", "error", err, "in", backoff)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 30*time.Second)
			continue
		}
		backoff = time.Second
		if meta.LastIndex < index {
			index = 0 // the index went back (a Consul snapshot restore): start over
			continue
		}
		if meta.LastIndex == index {
			continue
		}
		index = meta.LastIndex
		recs := s.decode(pairs)
		s.mu.Lock()
		changed := !s.listed || !maps.EqualFunc(s.cache, recs, func(a, b Record) bool { return a.Index == b.Index })
		s.cache, s.listed = recs, true
		s.mu.Unlock()
		if changed && onChange != nil {
			onChange()
		}
	}
}
