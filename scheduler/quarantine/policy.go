// Package quarantine acts on the failures a crunch's coordinator reports
// through the orchestrator WebSocket (scheduler/orchws): a per-crunch
// Policy, set by the operator in an HCL file, maps each failure code to an
// action (restart the model's allocation, quarantine the model, or only
// count the report), an Engine applies it, and a Store keeps each
// quarantine in Consul KV, where every scheduler instance (the leader that
// reconciles, whoever serves the WebSocket, a new leader after a failover)
// reads the same holds. The reconciler keeps a quarantined model's job
// stopped until its submission changes or an operator lifts the hold.
// See docs/scheduler.md, "Failure reports".
package quarantine

import (
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclsimple"
)

// Action is what a report of a code does.
type Action string

// The actions a policy can map a failure code to.
const (
	// ActionCount only counts the report (metrics, log).
	ActionCount Action = "count"
	// ActionRestart restarts the model's running allocations (Nomad's
	// allocation restart), at most once per Policy.RestartInterval; the
	// QuarantineAfter-th report of the model within Window quarantines it.
	ActionRestart Action = "restart"
	// ActionQuarantine stops the model and keeps it stopped (a hold in
	// Consul KV) until its submission changes or an operator lifts it.
	ActionQuarantine Action = "quarantine"
)

// Policy is one crunch's response to its coordinator's reports.
type Policy struct {
	// Codes maps a failure code to its action; a code not listed is
	// counted only.
	Codes map[string]Action
	// QuarantineAfter reports of restart codes about one model within
	// Window quarantine it (0: never).
	QuarantineAfter int
	Window          time.Duration
	// RestartInterval is the least time between two restarts of a model:
	// reports in between count toward QuarantineAfter but restart nothing.
	RestartInterval time.Duration
	// ReportRate (per second) and ReportBurst bound the reports one
	// coordinator of the crunch may send (a token bucket); the rest are
	// dropped and counted.
	ReportRate  float64
	ReportBurst int
}

// Action returns what a report of code does under p.
func (p Policy) Action(code string) Action {
	if a, ok := p.Codes[code]; ok {
		return a
	}
	return ActionCount
}

// DefaultPolicy is the policy of a crunch the operator's file does not
// change: what CrunchDAO's orchestrator does with the same codes.
func DefaultPolicy() Policy {
	return Policy{
		Codes: map[string]Action{
			"BAD_IMPLEMENTATION": ActionQuarantine,
			"LOW_PERFORMANCE":    ActionQuarantine,
			"MULTIPLE_TIMEOUT":   ActionRestart,
			"CONNECTION_FAILED":  ActionRestart,
		},
		QuarantineAfter: 3,
		Window:          10 * time.Minute,
		RestartInterval: time.Minute,
		ReportRate:      1,
		ReportBurst:     20,
	}
}

// Config is the policy of every crunch: Default, changed per crunch.
type Config struct {
	Default  Policy
	Crunches map[string]Policy // by crunch name, as in the WebSocket's URL
}

// DefaultConfig is DefaultPolicy for every crunch.
func DefaultConfig() *Config { return &Config{Default: DefaultPolicy(), Crunches: map[string]Policy{}} }

// For returns crunch's policy.
func (c *Config) For(crunch string) Policy {
	if c == nil {
		return DefaultPolicy()
	}
	if p, ok := c.Crunches[crunch]; ok {
		return p
	}
	return c.Default
}

// file is the HCL layout of a policy file:
//
//	default {
//	  codes            = { LOW_PERFORMANCE = "count" }
//	  quarantine_after = 3
//	  window           = "10m"
//	  restart_interval = "1m"
//	  report_rate      = 1
//	  report_burst     = 20
//	}
//	crunch "mid-one" {
//	  codes = { MULTIPLE_FAILED = "restart" }
//	}
//
// Every attribute is optional. A block's codes are merged over those it
// inherits (the built-in defaults, then the default block), code by code;
// its other attributes replace the inherited ones.
type file struct {
	Default  *block       `hcl:"default,block"`
	Crunches []crunchBody `hcl:"crunch,block"`
}

type crunchBody struct {
	Name string   `hcl:"name,label"`
	Body hcl.Body `hcl:",remain"`
}

type block struct {
	Codes           map[string]string `hcl:"codes,optional"`
	QuarantineAfter *int              `hcl:"quarantine_after,optional"`
	Window          *string           `hcl:"window,optional"`
	RestartInterval *string           `hcl:"restart_interval,optional"`
	ReportRate      *float64          `hcl:"report_rate,optional"`
	ReportBurst     *int              `hcl:"report_burst,optional"`
}

// codePattern is what a failure code may look like: CrunchDAO's are upper
// case words joined by underscores. Codes reach job meta, so nothing Nomad
// would interpolate may pass.
var codePattern = regexp.MustCompile(`^[A-Z][A-Z0-9_]{0,63}$`)

// ValidCode reports whether code can be a failure code.
func ValidCode(code string) bool { return codePattern.MatchString(code) }

// Load reads a policy file (HCL, the layout of file; docs/scheduler.md).
func Load(path string) (*Config, error) {
	var f file
	if err := hclsimple.DecodeFile(path, nil, &f); err != nil {
		return nil, fmt.Errorf("failure policy %s: %w", path, err)
	}
	c := DefaultConfig()
	if f.Default != nil {
		p, err := f.Default.apply(c.Default)
		if err != nil {
			return nil, fmt.Errorf("failure policy %s: default: %w", path, err)
		}
		c.Default = p
	}
	for _, cb := range f.Crunches {
		if cb.Name == "" {
			return nil, fmt.Errorf("failure policy %s: a crunch block without a name", path)
		}
		if _, dup := c.Crunches[cb.Name]; dup {
			return nil, fmt.Errorf("failure policy %s: crunch %q is named twice", path, cb.Name)
		}
		var b block
		if diags := gohcl.DecodeBody(cb.Body, nil, &b); diags.HasErrors() {
			return nil, fmt.Errorf("failure policy %s: crunch %q: %w", path, cb.Name, diags)
		}
		p, err := b.apply(c.Default)
		if err != nil {
			return nil, fmt.Errorf("failure policy %s: crunch %q: %w", path, cb.Name, err)
		}
		c.Crunches[cb.Name] = p
	}
	return c, nil
}

// apply returns base changed by b, or what is wrong with b.
func (b *block) apply(base Policy) (Policy, error) {
	p := base
	p.Codes = maps.Clone(base.Codes)
	var errs []error
	for _, code := range slices.Sorted(maps.Keys(b.Codes)) {
		a := Action(b.Codes[code])
		if !ValidCode(code) {
			errs = append(errs, fmt.Errorf("code %q: want upper case letters, digits and underscores", code))
		}
		switch a {
		case ActionCount, ActionRestart, ActionQuarantine:
			p.Codes[code] = a
		default:
			errs = append(errs, fmt.Errorf("code %s: action %q is none of count, restart, quarantine", code, a))
		}
	}
	duration := func(name string, s *string, dst *time.Duration) {
		if s == nil {
			return
		}
		d, err := time.ParseDuration(strings.TrimSpace(*s))
		if err != nil || d <= 0 {
			errs = append(errs, fmt.Errorf("%s %q: want a positive duration such as \"10m\"", name, *s))
			return
		}
		*dst = d
	}
	duration("window", b.Window, &p.Window)
	duration("restart_interval", b.RestartInterval, &p.RestartInterval)
	if b.QuarantineAfter != nil {
		if *b.QuarantineAfter < 0 {
			errs = append(errs, fmt.Errorf("quarantine_after %d: want 0 (never) or more", *b.QuarantineAfter))
		}
		p.QuarantineAfter = *b.QuarantineAfter
	}
	if b.ReportRate != nil {
		if *b.ReportRate <= 0 {
			errs = append(errs, fmt.Errorf("report_rate %v: want a positive number of reports per second", *b.ReportRate))
		}
		p.ReportRate = *b.ReportRate
	}
	if b.ReportBurst != nil {
		if *b.ReportBurst < 1 {
			errs = append(errs, fmt.Errorf("report_burst %d: want at least 1", *b.ReportBurst))
		}
		p.ReportBurst = *b.ReportBurst
	}
	return p, errors.Join(errs...)
}
