// Package testtime stretches tests' deadlines on slow machines. A deadline
// in a test bounds how long a failure takes to show; it says nothing about
// how fast the code must be. On a loaded CI machine, or in the cgroup v2
// guest that runs under qemu's software CPU (scripts/v2vm, 15-20x slower
// than native), fixed deadlines fail tests that would pass: each one goes
// through Scaled instead, and the slow environment sets the factor.
//
//	ctx, cancel := context.WithTimeout(ctx, testtime.Scaled(30*time.Second))
//
// Benchmarks and measurements (how much CPU a model got in 2 s) do not
// scale: only the time a test is willing to wait does.
package testtime

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"
)

// Env names the variable holding the factor: a number from 1 to 100
// (fractions allowed); unset or empty means 1. scripts/v2vm sets it in its
// guests.
const Env = "MODELNODES_TEST_TIMEOUT_SCALE"

// maxFactor bounds the factor: a bounded test stays bounded.
const maxFactor = 100

var factor = onceFromEnv()

// onceFromEnv reads the environment on first use (tests set it in TestMain
// or before; a test of this package resets factor).
func onceFromEnv() func() (float64, error) {
	return sync.OnceValues(func() (float64, error) { return parse(os.Getenv(Env)) })
}

func parse(v string) (float64, error) {
	if v == "" {
		return 1, nil
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || !(f >= 1 && f <= maxFactor) {
		return 0, fmt.Errorf("%s=%q: want a number from 1 to %d", Env, v, maxFactor)
	}
	return f, nil
}

// Factor is the factor from the environment. It panics when the variable
// holds something else than a number from 1 to 100: a test run configured
// wrongly stops at once rather than running with deadlines nobody chose.
func Factor() float64 {
	f, err := factor()
	if err != nil {
		panic(err)
	}
	return f
}

// Scaled is d times Factor.
func Scaled(d time.Duration) time.Duration {
	return time.Duration(float64(d) * Factor())
}
