package pyversion

import (
	"errors"
	"fmt"
	"strings"
)

// clause is one PEP 440 version specifier ("~=3.11", "==3.12.*").
type clause struct {
	op       string
	release  []int
	wildcard bool
}

// operators in the order they must be tried (longest first). "===" is
// recognised only to refuse it with a clear message.
var operators = []string{"===", "~=", "==", "!=", "<=", ">=", "<", ">"}

// maxClauses bounds a specifier set; real ones have one to three.
const maxClauses = 16

// maxRelease bounds the numbers of a specifier's version ("3.11.2" has 3).
const maxRelease = 4

// parseSpecifiers reads a PEP 440 specifier set (">=3.10, <3.13"). An empty
// set accepts every version.
func parseSpecifiers(s string) ([]clause, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	items := strings.Split(s, ",")
	if len(items) > maxClauses {
		return nil, fmt.Errorf("%d specifiers, more than %d", len(items), maxClauses)
	}
	out := make([]clause, 0, len(items))
	for _, it := range items {
		c, err := parseClause(strings.TrimSpace(it))
		if err != nil {
			return nil, err
		}
		out = append(out, c...)
	}
	return out, nil
}

// parseClause reads one specifier; "~=" comes back as its two clauses.
func parseClause(s string) ([]clause, error) {
	if s == "" {
		return nil, errors.New("empty specifier (a stray comma?)")
	}
	var op string
	for _, o := range operators {
		if strings.HasPrefix(s, o) {
			op = o
			break
		}
	}
	switch op {
	case "":
		return nil, fmt.Errorf("specifier %q has no operator (want ==, !=, <=, >=, <, > or ~=)", clip(s))
	case "===":
		return nil, fmt.Errorf("specifier %q: arbitrary equality (===) is not supported", clip(s))
	}
	ver := strings.TrimSpace(s[len(op):])
	wildcard := false
	if rest, ok := strings.CutSuffix(ver, ".*"); ok {
		if op != "==" && op != "!=" {
			return nil, fmt.Errorf("specifier %q: a wildcard (.*) goes only with == or !=", clip(s))
		}
		ver, wildcard = rest, true
	}
	rel, err := parseRelease(ver)
	if err != nil {
		return nil, fmt.Errorf("specifier %q: %w", clip(s), err)
	}
	if op != "~=" {
		return []clause{{op: op, release: rel, wildcard: wildcard}}, nil
	}
	if len(rel) < 2 {
		return nil, fmt.Errorf("specifier %q: ~= needs at least two numbers (~=3.11)", clip(s))
	}
	// ~=V.N is >=V.N, ==V.*
	return []clause{{op: ">=", release: rel}, {op: "==", release: rel[:len(rel)-1], wildcard: true}}, nil
}

// parseRelease reads the release part of a version ("3", "3.11", "3.11.2").
// Epochs, pre-, post-, development and local versions are refused: no
// interpreter a node lists is one, and matching them right needs all of
// PEP 440's ordering for no gain.
func parseRelease(s string) ([]int, error) {
	switch {
	case s == "":
		return nil, errors.New("no version")
	case strings.Contains(s, "!"):
		return nil, errors.New("version epochs (N!) are not supported")
	case strings.Contains(s, "+"):
		return nil, errors.New("local versions (+...) are not supported")
	case strings.ContainsAny(s, "*"):
		return nil, errors.New("a wildcard may only end the version (3.12.*)")
	}
	for _, c := range s {
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' {
			return nil, fmt.Errorf("%q: pre-, post- and development releases are not supported (write the release: 3.13)", clip(s))
		}
	}
	parts := strings.Split(s, ".")
	if len(parts) > maxRelease {
		return nil, fmt.Errorf("%q has more than %d numbers", clip(s), maxRelease)
	}
	rel := make([]int, len(parts))
	for i, p := range parts {
		n, err := number(p)
		if err != nil {
			return nil, err
		}
		rel[i] = n
	}
	return rel, nil
}

// compareRelease compares two releases padded with zeros to the same
// length (PEP 440: 3.10 == 3.10.0).
func compareRelease(a, b []int) int {
	for i := range max(len(a), len(b)) {
		x, y := 0, 0
		if i < len(a) {
			x = a[i]
		}
		if i < len(b) {
			y = b[i]
		}
		if x != y {
			if x < y {
				return -1
			}
			return 1
		}
	}
	return 0
}

// matches reports whether the final release v satisfies c.
func (c clause) matches(v Version) bool {
	rel := []int{v.Major, v.Minor, v.Micro}
	if c.wildcard {
		// Prefix match: v's release, padded, cut to the prefix's length.
		eq := true
		for i, n := range c.release {
			x := 0
			if i < len(rel) {
				x = rel[i]
			}
			if x != n {
				eq = false
				break
			}
		}
		return eq == (c.op == "==")
	}
	d := compareRelease(rel, c.release)
	switch c.op {
	case "==":
		return d == 0
	case "!=":
		return d != 0
	case "<=":
		return d <= 0
	case ">=":
		return d >= 0
	case "<":
		return d < 0
	case ">":
		return d > 0
	}
	return false
}
