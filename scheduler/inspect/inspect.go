// Package inspect reads, before a model's job is placed, what its code
// archive says about the node it needs: today the Python it asks for
// (.python-version, requires-python in pyproject.toml; package
// internal/pyversion). The scheduler constrains the job with it, so that
// Nomad places the model only on a node that has a matching interpreter.
//
// An Inspector fetches each archive once per digest, in the background
// (never in the reconcile loop), within a size and a time limit, under the
// same URL policy as the nodes' artifact fetches (redirects included), and
// verifies the digest before it reads anything. It keeps answers in memory
// by digest.
package inspect

import (
	"archive/tar"
	"archive/zip"
	"bufio"
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/modelnodes/modelnodes/internal/pyversion"
	"github.com/modelnodes/modelnodes/internal/redact"
	"github.com/modelnodes/modelnodes/jobs"
)

// Defaults of an Inspector's limits.
const (
	DefaultMaxBytes    = 256 << 20
	DefaultTimeout     = 2 * time.Minute
	DefaultConcurrency = 4
)

// Retry delays after a failed fetch: the first, doubled per failure up to
// the last.
const (
	retryFirst = 30 * time.Second
	retryMax   = 30 * time.Minute
)

// forgetAfter is how long an answer no Lookup asked for is kept.
const forgetAfter = time.Hour

// Inspector answers Lookups from its cache and fetches what it lacks in the
// background. The zero value is not usable: set Options.
type Inspector struct {
	// Options are the deployment's job options: a redirect is followed only
	// to a URL its artifact policy accepts.
	Options *jobs.Options
	// Client fetches archives (default: an http.Client with the
	// environment's proxy settings).
	Client *http.Client
	// MaxBytes bounds an archive (default DefaultMaxBytes); Timeout one
	// fetch and read (default DefaultTimeout); Concurrency the fetches at
	// once (default DefaultConcurrency).
	MaxBytes    int64
	Timeout     time.Duration
	Concurrency int
	// TempDir holds archives while they are read (default os.TempDir()).
	TempDir string
	// CacheDir, when set, keeps what each archive's root held (two small
	// files) by digest, so that a restarted scheduler fetches nothing again.
	CacheDir string
	Logger   hclog.Logger
	// OnDone is called (without locks held) after each fetch, so the
	// scheduler reconciles with the answer.
	OnDone func()

	once    sync.Once
	sem     chan struct{}
	mu      sync.Mutex
	entries map[string]*entry // by digest and archive kind
	pruned  time.Time
	now     func() time.Time
}

type entry struct {
	answer   Answer
	fetching bool
	failures int
	retryAt  time.Time
	used     time.Time
}

// Answer is what an Inspector knows of one archive.
type Answer struct {
	// Ready says an inspection finished: false while the first fetch runs.
	Ready bool
	// Python is the archive's request; the zero Request when it asks for
	// nothing, or when the archive is of a kind this package does not read
	// (the node's driver still checks at start).
	Python pyversion.Request
	// Regexp is Python's ListRegexp (computed once per archive: it takes
	// milliseconds), empty when Python asks for nothing.
	Regexp string
	// Err is the submission's fault and permanent for the digest: its
	// request cannot be read (pyversion's errors, a symbolic link, a file
	// too large) or no version satisfies it. No node would run it.
	Err error
	// FetchErr says the archive could not be fetched or did not match its
	// digest; Python is unknown. A later Lookup fetches again (with
	// backoff).
	FetchErr error
}

func (in *Inspector) init() {
	in.once.Do(func() {
		n := in.Concurrency
		if n <= 0 {
			n = DefaultConcurrency
		}
		in.sem = make(chan struct{}, n)
		in.entries = map[string]*entry{}
		if in.Logger == nil {
			in.Logger = hclog.NewNullLogger()
		}
	})
}

func (in *Inspector) clock() time.Time {
	if in.now != nil {
		return in.now()
	}
	return time.Now()
}

// Lookup returns what is known of the archive at rawURL with the given
// sha256 (lowercase hex), and starts a fetch in the background when nothing
// is, or when the last fetch failed and its retry is due. It never blocks on
// the network.
func (in *Inspector) Lookup(ctx context.Context, rawURL, digest string) Answer {
	in.init()
	in.mu.Lock()
	defer in.mu.Unlock()
	now := in.clock()
	in.prune(now)
	// The archive's kind comes from its URL (as on the node): the same
	// bytes named .zip and .tar.gz are read differently.
	key := digest + " " + archiveKind(rawURL)
	e := in.entries[key]
	if e == nil {
		e = &entry{}
		in.entries[key] = e
	}
	e.used = now
	if !e.fetching && (!e.answer.Ready || e.answer.FetchErr != nil && !now.Before(e.retryAt)) {
		e.fetching = true
		go in.fetch(ctx, e, rawURL, digest)
	}
	return e.answer
}

// prune drops answers unused for forgetAfter, at most every few minutes;
// in.mu held.
func (in *Inspector) prune(now time.Time) {
	if now.Sub(in.pruned) < forgetAfter/10 {
		return
	}
	in.pruned = now
	for d, e := range in.entries {
		if !e.fetching && now.Sub(e.used) > forgetAfter {
			delete(in.entries, d)
		}
	}
}

// fetch inspects the archive in the background and records the answer in
// e (which prune leaves alone while it is fetching).
func (in *Inspector) fetch(ctx context.Context, e *entry, rawURL, digest string) {
	select {
	case in.sem <- struct{}{}:
	case <-ctx.Done():
		in.mu.Lock()
		e.fetching = false
		in.mu.Unlock()
		return
	}
	t0 := time.Now()
	req, fetchErr := in.inspect(ctx, rawURL, digest)
	<-in.sem
	a := Answer{Ready: true}
	switch {
	case fetchErr != nil:
		a.FetchErr = redact.Error(fetchErr)
	case req.err != nil:
		a.Err = req.err
	case !req.python.Any():
		a.Python = req.python
		if a.Regexp, a.Err = req.python.ListRegexp(); a.Err != nil {
			a.Python = pyversion.Request{}
		}
	}
	in.mu.Lock()
	e.fetching = false
	if ctx.Err() != nil && fetchErr != nil {
		// The scheduler is stopping: nothing was learnt.
		in.mu.Unlock()
		return
	}
	e.answer = a
	if a.FetchErr != nil {
		e.failures++
		e.retryAt = in.clock().Add(min(retryFirst<<min(e.failures-1, 16), retryMax))
	}
	in.mu.Unlock()
	switch {
	case a.FetchErr != nil:
		in.Logger.Warn("cannot read the submission's code archive; its job is placed without a python constraint", "url", redact.URL(rawURL), "error", a.FetchErr)
	case a.Err != nil:
		in.Logger.Warn("the submission's python request is refused", "url", redact.URL(rawURL), "error", a.Err)
	default:
		in.Logger.Debug("submission inspected", "url", redact.URL(rawURL), "python", a.Python.String(), "took", time.Since(t0).Round(time.Millisecond))
	}
	if in.OnDone != nil {
		in.OnDone()
	}
}

// result is the content's verdict (a fetch error is inspect's other return).
type result struct {
	python pyversion.Request
	err    error
}

// inspect fetches, verifies and reads one archive, or reads what CacheDir
// kept of it.
func (in *Inspector) inspect(ctx context.Context, rawURL, digest string) (result, error) {
	kind := archiveKind(rawURL)
	if c, ok := in.loadCached(digest, kind); ok {
		return c.result(), nil
	}
	timeout := in.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	f, err := in.download(ctx, rawURL, digest)
	if err != nil {
		return result{}, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	files, err := readRoot(ctx, f, kind)
	var c cached
	switch {
	case errors.Is(err, errContent):
		c.Refused = err.Error()
	case err != nil:
		return result{}, err
	default:
		c.Files = files
	}
	in.storeCached(digest, kind, c)
	return c.result(), nil
}

// cached is what an archive's root held, as CacheDir keeps it: the files'
// bytes (the request is parsed again from them, so a newer parser decides
// anew), or why they were refused.
type cached struct {
	Files   map[string][]byte `json:"files,omitempty"`
	Refused string            `json:"refused,omitempty"`
}

func (c cached) result() result {
	if c.Refused != "" {
		return result{err: fmt.Errorf("%w: %s", errContent, strings.TrimPrefix(c.Refused, errContent.Error()+": "))}
	}
	req, err := pyversion.FromFiles(c.Files[pyversion.PythonVersionFile], c.Files[pyversion.PyprojectFile])
	return result{python: req, err: err}
}

// cachePath is where CacheDir keeps an archive's files, "" when there is no
// CacheDir or the digest is not one (it names a file).
func (in *Inspector) cachePath(digest, kind string) string {
	if in.CacheDir == "" || len(digest) != sha256.Size*2 {
		return ""
	}
	if _, err := hex.DecodeString(digest); err != nil || strings.ToLower(digest) != digest {
		return ""
	}
	if kind == kindNone {
		kind = "plain"
	}
	return filepath.Join(in.CacheDir, digest+"."+kind+".json")
}

// maxCached bounds a cache file: both files at their caps, base64.
const maxCached = 2 * (pyversion.MaxPythonVersionFile + pyversion.MaxPyprojectFile)

func (in *Inspector) loadCached(digest, kind string) (cached, bool) {
	p := in.cachePath(digest, kind)
	if p == "" {
		return cached{}, false
	}
	f, err := os.Open(p)
	if err != nil {
		return cached{}, false
	}
	defer f.Close()
	var c cached
	if err := json.NewDecoder(io.LimitReader(f, maxCached)).Decode(&c); err != nil {
		in.Logger.Warn("unreadable code cache entry; fetching the archive again", "path", p, "error", err)
		return cached{}, false
	}
	return c, true
}

func (in *Inspector) storeCached(digest, kind string, c cached) {
	p := in.cachePath(digest, kind)
	if p == "" {
		return
	}
	b, err := json.Marshal(c)
	if err == nil {
		err = os.MkdirAll(in.CacheDir, 0o700)
	}
	if err == nil {
		// Whole or absent: written aside, then renamed.
		var tmp *os.File
		if tmp, err = os.CreateTemp(in.CacheDir, ".tmp-*"); err == nil {
			_, err = tmp.Write(b)
			if cerr := tmp.Close(); err == nil {
				err = cerr
			}
			if err == nil {
				err = os.Rename(tmp.Name(), p)
			}
			if err != nil {
				os.Remove(tmp.Name())
			}
		}
	}
	if err != nil {
		in.Logger.Warn("cannot keep what a code archive holds; it will be fetched again after a restart", "error", err)
	}
}

// download writes the archive to a temporary file, checking its size and
// digest; the file is positioned at its start.
func (in *Inspector) download(ctx context.Context, rawURL, digest string) (*os.File, error) {
	limit := in.MaxBytes
	if limit <= 0 {
		limit = DefaultMaxBytes
	}
	client := http.Client{Transport: http.DefaultTransport}
	if in.Client != nil {
		client = *in.Client
	}
	client.CheckRedirect = func(r *http.Request, via []*http.Request) error {
		if len(via) >= 5 {
			return errors.New("more than 5 redirects")
		}
		// The nodes' fetches follow redirects too (go-getter); the URL a
		// redirect names must pass the policy the model's own URL passed,
		// or an allowed host could point the scheduler anywhere.
		if err := in.Options.CheckArtifactURL(r.URL.String()); err != nil {
			return fmt.Errorf("redirect refused: %w", err)
		}
		return nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return nil, fmt.Errorf("code archive: %w", err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("code archive: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("code archive: %s answers %s", redact.URL(resp.Request.URL.String()), resp.Status)
	}
	if resp.ContentLength > limit {
		return nil, fmt.Errorf("code archive: %d bytes, more than %d", resp.ContentLength, limit)
	}
	f, err := os.CreateTemp(in.TempDir, "modelnodes-inspect-*")
	if err != nil {
		return nil, fmt.Errorf("code archive: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(resp.Body, limit+1))
	switch {
	case err != nil:
		return nil, fmt.Errorf("code archive: %w", err)
	case n > limit:
		return nil, fmt.Errorf("code archive: more than %d bytes", limit)
	case hex.EncodeToString(h.Sum(nil)) != digest:
		return nil, fmt.Errorf("code archive: its sha256 is %x, not the authorized %s", h.Sum(nil), digest)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("code archive: %w", err)
	}
	ok = true
	return f, nil
}

// Kinds of archive, as go-getter tells them on the node: by the URL path's
// extension (the artifact policy refuses query strings, so no "archive="
// parameter overrides it).
const (
	kindNone  = ""
	kindTar   = "tar"
	kindTarGz = "tar.gz"
	kindTarBz = "tar.bz2"
	kindZip   = "zip"
)

// archiveKind is the kind of archive go-getter would unpack rawURL as;
// kindNone for a file it does not unpack, or an archive kind this package
// does not read (tar.xz, tar.zst): those get no constraint.
func archiveKind(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return kindNone
	}
	p := strings.ToLower(path.Base(u.Path))
	switch {
	case strings.HasSuffix(p, ".tar.gz"), strings.HasSuffix(p, ".tgz"):
		return kindTarGz
	case strings.HasSuffix(p, ".tar.bz2"), strings.HasSuffix(p, ".tbz2"):
		return kindTarBz
	case strings.HasSuffix(p, ".tar"):
		return kindTar
	case strings.HasSuffix(p, ".zip"):
		return kindZip
	}
	return kindNone
}

// errContent marks an archive whose files are the submission's fault.
var errContent = errors.New("refused")

// wanted are the files read from an archive's root, with their caps.
var wanted = map[string]int64{
	pyversion.PythonVersionFile: pyversion.MaxPythonVersionFile,
	pyversion.PyprojectFile:     pyversion.MaxPyprojectFile,
}

// readRoot returns the wanted files at the archive's root (a later entry of
// the same name replaces an earlier one, as unpacking does). A wanted name
// that is not a regular file, or is over its cap, is the submission's fault
// (errContent): the node's driver would refuse it too.
func readRoot(ctx context.Context, f *os.File, kind string) (map[string][]byte, error) {
	out := map[string][]byte{}
	r := &ctxReader{ctx: ctx, r: f}
	switch kind {
	case kindNone:
		return out, nil
	case kindZip:
		fi, err := f.Stat()
		if err != nil {
			return nil, err
		}
		if err := checkZipEntries(f, fi.Size()); err != nil {
			return nil, err
		}
		zr, err := zip.NewReader(&ctxReaderAt{ctx: ctx, r: f}, fi.Size())
		if err != nil {
			return nil, fmt.Errorf("code archive: %w", err)
		}
		for _, zf := range zr.File {
			name := rootName(zf.Name)
			limit, ok := wanted[name]
			if !ok {
				continue
			}
			if !zf.Mode().IsRegular() {
				return nil, fmt.Errorf("%w: the submission's %s is not a regular file", errContent, name)
			}
			rc, err := zf.Open()
			if err != nil {
				return nil, fmt.Errorf("code archive: %s: %w", name, err)
			}
			b, err := readCapped(rc, name, limit)
			rc.Close()
			if err != nil {
				return nil, err
			}
			out[name] = b
		}
		return out, nil
	}
	var tr *tar.Reader
	switch kind {
	case kindTarGz:
		gz, err := gzip.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("code archive: %w", err)
		}
		tr = tar.NewReader(&capReader{r: gz, left: unpackLimit(f)})
	case kindTarBz:
		tr = tar.NewReader(&capReader{r: bzip2.NewReader(r), left: unpackLimit(f)})
	default:
		tr = tar.NewReader(r)
	}
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("code archive: %w", err)
		}
		name := rootName(hdr.Name)
		limit, ok := wanted[name]
		if !ok {
			continue
		}
		if hdr.Typeflag != tar.TypeReg {
			return nil, fmt.Errorf("%w: the submission's %s is not a regular file", errContent, name)
		}
		b, err := readCapped(tr, name, limit)
		if err != nil {
			return nil, err
		}
		out[name] = b
	}
}

// maxZipEntries bounds a zip archive's directory: archive/zip keeps every
// entry's header in memory (about 240 bytes each; a 256 MiB archive of
// empty entries would take 600 MB), and reads the directory to its end
// whatever count the archive claims.
const maxZipEntries = 100_000

// checkZipEntries walks a zip's central directory the way archive/zip
// will, counting its records with constant memory, and refuses more than
// maxZipEntries. Zip64 directories (offset 0xffffffff) are not read.
func checkZipEntries(f *os.File, size int64) error {
	const eocdLen, maxComment, headerLen = 22, 65535, 46
	n := min(size, eocdLen+maxComment)
	tail := make([]byte, n)
	if _, err := f.ReadAt(tail, size-n); err != nil {
		return fmt.Errorf("code archive: %w", err)
	}
	i := bytes.LastIndex(tail, []byte("PK\x05\x06"))
	if i < 0 || len(tail)-i < eocdLen {
		return errors.New("code archive: not a zip archive (no end of directory)")
	}
	offset := int64(binary.LittleEndian.Uint32(tail[i+16:]))
	if offset == 0xffffffff || offset > size {
		return errors.New("code archive: a zip64 or corrupt directory is not read")
	}
	r := bufio.NewReader(io.NewSectionReader(f, offset, size-offset))
	hdr := make([]byte, headerLen)
	for count := 0; ; count++ {
		if _, err := io.ReadFull(r, hdr); err != nil || !bytes.Equal(hdr[:4], []byte("PK\x01\x02")) {
			return nil
		}
		if count == maxZipEntries {
			return fmt.Errorf("code archive: a zip of more than %d entries is not read", maxZipEntries)
		}
		skip := int(binary.LittleEndian.Uint16(hdr[28:])) + int(binary.LittleEndian.Uint16(hdr[30:])) + int(binary.LittleEndian.Uint16(hdr[32:]))
		if _, err := r.Discard(skip); err != nil {
			return nil
		}
	}
}

// maxExpansion bounds how much a compressed archive may unpack to, per
// byte of archive, above minUnpack: a gzip bomb (1:1000) is refused after
// a moment's work instead of burning the fetch's whole time limit at every
// retry. Source code compresses far less than 1:64; a small archive may
// unpack to minUnpack whatever its ratio.
const (
	maxExpansion = 64
	minUnpack    = 64 << 20
)

func unpackLimit(f *os.File) int64 {
	fi, err := f.Stat()
	if err != nil {
		return minUnpack
	}
	return max(maxExpansion*fi.Size(), minUnpack)
}

// capReader fails once more than left bytes were read.
type capReader struct {
	r    io.Reader
	left int64
}

func (c *capReader) Read(p []byte) (int, error) {
	if c.left <= 0 {
		return 0, fmt.Errorf("code archive: unpacks to more than %d times its size (or %d MiB)", maxExpansion, minUnpack>>20)
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= int64(n)
	return n, err
}

// rootName is an entry's name when it sits at the archive's root ("./x"
// counts), else "".
func rootName(name string) string {
	name = strings.TrimSuffix(strings.TrimPrefix(name, "./"), "/") // a directory's entry ends in '/'
	if strings.Contains(name, "/") {
		return ""
	}
	return name
}

func readCapped(r io.Reader, name string, limit int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, fmt.Errorf("code archive: %s: %w", name, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%w: the submission's %s has more than %d bytes", errContent, name, limit)
	}
	return b, nil
}

// ctxReader stops reading when ctx ends: decompressing a hostile archive
// (a gzip bomb whose entries are skipped, not kept) is bounded by the
// fetch's time limit.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

type ctxReaderAt struct {
	ctx context.Context
	r   io.ReaderAt
}

func (c *ctxReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.ReadAt(p, off)
}
