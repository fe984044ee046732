package rego

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/goambient/goambient/policies"
)

var (
	diffCases = flag.Int("diff.cases", 10000, "number of random policy sets the differential test evaluates")
	diffSeed  = flag.Uint64("diff.seed", 1, "seed of the differential test's generator")
	onlyCase  = flag.Int("diff.case", -1, "run only this case of the differential test (as a failure names it)")
	maxFail   = flag.Int("diff.maxfail", 5, "stop the differential test after this many differing cases")
)

const (
	requestsPerSet = 4
	// raceCases is the default number of sets under -race: 10000 sets take about 440 CPU
	// seconds there, 1500 keep the package's tests near 35 s on two cores.
	raceCases = 1500
)

// numCases is -diff.cases, or raceCases under -race when the flag is not given.
func numCases() int {
	given := false
	flag.Visit(func(f *flag.Flag) { given = given || f.Name == "diff.cases" })
	if raceDetector && !given {
		return raceCases
	}
	return *diffCases
}

// diffCase is one policy set and the requests evaluated against it.
type diffCase struct {
	index    int
	policies []map[string]any
	requests []policies.Request
}

func makeCase(seed uint64, i int) diffCase {
	g := newGen(seed, uint64(i))
	c := diffCase{index: i, policies: g.policySet()}
	for range requestsPerSet {
		c.requests = append(c.requests, g.request())
	}
	return c
}

// multiDoc is the policies as one multi-document file, one JSON object per document.
func multiDoc(objs []map[string]any) []byte {
	docs := make([][]byte, len(objs))
	for i, o := range objs {
		b, err := json.Marshal(o)
		if err != nil {
			panic(err)
		}
		docs[i] = b
	}
	return bytes.Join(docs, []byte("\n---\n"))
}

// TestDifferential holds the native engine (policies.Compile / Engine.Decide) to the Rego
// reference on random valid policy sets and requests: -diff.cases sets (10000; 1500 under
// -race unless the flag is given) of 1-8 policies, 4 requests each, spread over GOMAXPROCS
// workers. Every case is reproducible on its own:
// go test ./policies/rego -run TestDifferential -diff.seed=S -diff.case=N -v
func TestDifferential(t *testing.T) {
	ctx := context.Background()
	ev, err := New(ctx)
	if err != nil {
		t.Fatal(err)
	}
	first, last := 0, numCases()
	if *onlyCase >= 0 {
		first, last = *onlyCase, *onlyCase+1
	}
	var (
		next     atomic.Int64
		done     atomic.Int64
		failures atomic.Int32
		mu       sync.Mutex
		tally    = map[string]int{}
		wg       sync.WaitGroup
	)
	next.Store(int64(first))
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			local := map[string]int{}
			for {
				i := int(next.Add(1) - 1)
				if i >= last || failures.Load() >= int32(*maxFail) {
					break
				}
				if !checkCase(t, ctx, ev, makeCase(*diffSeed, i), local) {
					failures.Add(1)
				}
				done.Add(1)
			}
			mu.Lock()
			for k, v := range local {
				tally[k] += v
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	t.Logf("%d policy sets, %d requests (seed %d): %s", done.Load(), done.Load()*requestsPerSet, *diffSeed, formatTally(tally))
}

// checkCase evaluates one case with both engines; it reports each difference and returns false
// when there was one.
func checkCase(t *testing.T, ctx context.Context, ev *Evaluator, c diffCase, tally map[string]int) bool {
	rerun := fmt.Sprintf("go test ./policies/rego -run TestDifferential -diff.seed=%d -diff.case=%d -v", *diffSeed, c.index)
	objs, errs := policies.Load(multiDoc(c.policies), fmt.Sprintf("case-%d", c.index))
	if len(errs) > 0 || len(objs.AuthorizationPolicies) != len(c.policies) {
		t.Errorf("case %d: policies.Load rejects a generated policy (a bug in the generator or in the loader's validation): %v\n%s\n--- policies\n%s",
			c.index, errs, rerun, policiesYAML(c.policies))
		return false
	}
	eng := policies.Compile(objs.AuthorizationPolicies, policies.Options{RootNamespace: rootNS})
	set, err := PolicySet(c.policies)
	if err != nil {
		t.Errorf("case %d: %v", c.index, err)
		return false
	}
	ok := true
	for j := range c.requests {
		req := &c.requests[j]
		native := eng.Decide(req)
		ref, err := ev.DecideSet(ctx, rootNS, set, req)
		if err != nil {
			t.Errorf("case %d request %d: rego: %v", c.index, j, err)
			return false
		}
		count(tally, ref)
		if mustJSON(native) != mustJSON(ref) {
			reqJSON, _ := json.MarshalIndent(req, "", "  ")
			t.Errorf("case %d request %d: the engines differ\n%s\n--- policies\n%s--- request\n%s\n--- rego (reference)\n%s\n--- native\n%s",
				c.index, j, rerun, policiesYAML(c.policies), reqJSON, mustJSON(ref), mustJSON(native))
			ok = false
		}
	}
	return ok
}

func policiesYAML(objs []map[string]any) string {
	var b strings.Builder
	for i, o := range objs {
		if i > 0 {
			b.WriteString("---\n")
		}
		y, err := yaml.Marshal(o)
		if err != nil {
			panic(err)
		}
		b.Write(y)
	}
	return b.String()
}

// count tallies what a decision exercised, to show that the random cases reach every outcome.
func count(tally map[string]int, d policies.Decision) {
	tally["reason="+string(d.Reason)]++
	if d.Custom.Policy != "" {
		tally["custom"]++
	}
	if len(d.Audit) > 0 {
		tally["audit"]++
	}
	if d.DryRun.Applied {
		tally[fmt.Sprintf("dry_run.allowed=%v", d.DryRun.Allowed)]++
	}
	if d.Rule >= 10 {
		tally["rule>=10"]++
	}
}

func formatTally(tally map[string]int) string {
	keys := make([]string, 0, len(tally))
	for k := range tally {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s:%d", k, tally[k])
	}
	return strings.Join(parts, " ")
}
