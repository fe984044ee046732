//go:build race

package rego

// raceDetector is true when the tests run with -race, which makes OPA's evaluator about 7
// times slower.
const raceDetector = true
