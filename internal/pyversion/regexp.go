package pyversion

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// The versions ListRegexp considers: majors 0–9, minors and micros 0–99.
// A request that accepts every micro (every minor) in that range is taken
// to accept any, so ">=3.10" also matches a 3.10.100 should one appear; a
// version outside it is otherwise not matched, which would only keep a
// model off a node the driver would have accepted.
const (
	regexpMajors = 10
	regexpMinors = 100
	regexpMicros = 100
)

// MaxRegexp bounds ListRegexp's answer; real requests need a few hundred
// bytes, the worst a dozen != clauses can make stays below it.
const MaxRegexp = 16 << 10

// ErrMatchesNothing is ListRegexp's error for a request no version can
// satisfy (">=3.13,<3.12").
var ErrMatchesNothing = errors.New("no python version satisfies it")

// ListRegexp returns an RE2 regular expression that matches a FormatList
// list (the driver's node attribute, "3.11.2,3.13.0") when the list holds a
// final version the request accepts, so that a job can be constrained to the
// nodes having one with Nomad's regexp operator. It uses neither '$', '{',
// '}' nor '%', which Nomad's interpolation would read. The zero Request has
// no regexp: it needs no constraint.
func (r Request) ListRegexp() (string, error) {
	if r.Any() {
		return "", errors.New("the request accepts any python: no constraint")
	}
	var alts []string
	var fullMajors []int
	for major := range regexpMajors {
		var full []int
		var partial []string
		for minor := range regexpMinors {
			var micros []int
			for micro := range regexpMicros {
				if r.Matches(Version{Major: major, Minor: minor, Micro: micro}) {
					micros = append(micros, micro)
				}
			}
			switch len(micros) {
			case 0:
			case regexpMicros:
				full = append(full, minor)
			default:
				partial = append(partial, fmt.Sprintf(`%d\.%d\.%s`, major, minor, group(micros)))
			}
		}
		switch {
		case len(full) == regexpMinors:
			fullMajors = append(fullMajors, major)
		case len(full) > 0:
			alts = append(alts, fmt.Sprintf(`%d\.%s\.[0-9]+`, major, group(full)))
		}
		alts = append(alts, partial...)
	}
	if len(fullMajors) > 0 {
		alts = append(alts, group(fullMajors)+`\.[0-9]+\.[0-9]+`)
	}
	if len(alts) == 0 {
		return "", fmt.Errorf("python %s: %w", r, ErrMatchesNothing)
	}
	re := `(\A|,)(` + strings.Join(alts, "|") + `)(,|\z)`
	if len(re) > MaxRegexp {
		return "", fmt.Errorf("python %s: too complex to place (a %d-byte expression)", r, len(re))
	}
	return re, nil
}

// group is an alternation of numbers 0–99 written as ranges: "7",
// "(1[0-9]|2[0-5])".
func group(ns []int) string {
	var alts []string
	for i := 0; i < len(ns); {
		j := i
		for j+1 < len(ns) && ns[j+1] == ns[j]+1 {
			j++
		}
		alts = append(alts, numberRange(ns[i], ns[j])...)
		i = j + 1
	}
	return groupStrings(alts)
}

// numberRange writes lo..hi (0 <= lo <= hi <= 99) as regexp alternatives,
// a decade at a time: 14..99 is "1[4-9]" and "[2-9][0-9]".
func numberRange(lo, hi int) []string {
	digits := func(a, b int) string {
		if a == b {
			return strconv.Itoa(a)
		}
		return fmt.Sprintf("[%d-%d]", a, b)
	}
	tens := func(t int) string {
		if t == 0 {
			return ""
		}
		return strconv.Itoa(t)
	}
	if lo/10 == hi/10 {
		return []string{tens(lo/10) + digits(lo%10, hi%10)}
	}
	var out []string
	if lo%10 != 0 || lo == 0 {
		// The first, partial decade (or decade 0, written without a tens digit).
		out = append(out, tens(lo/10)+digits(lo%10, 9))
		lo = lo/10*10 + 10
	}
	last := hi / 10
	if hi%10 != 9 {
		last--
	}
	if lo/10 <= last {
		out = append(out, digits(lo/10, last)+"[0-9]")
	}
	if hi%10 != 9 {
		out = append(out, tens(hi/10)+digits(0, hi%10))
	}
	return out
}

func groupStrings(s []string) string {
	if len(s) == 1 {
		return s[0]
	}
	return "(" + strings.Join(s, "|") + ")"
}
