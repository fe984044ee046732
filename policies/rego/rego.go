// Package rego evaluates AuthorizationPolicies with the Rego reference semantics (authz.rego) through OPA's Go API.
package rego

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/util"

	"github.com/goambient/goambient/policies"
)

//go:embed authz.rego
var module string

// Query is the rule whose value is the decision.
const Query = "data.goambient.authz.decision"

// Input is one evaluation: the policy set (AuthorizationPolicy objects as their Kubernetes JSON
// values) and the request. On an Evaluator made by NewWithPolicies, leave RootNamespace and
// Policies empty to use the prepared set; when Policies is non-nil it replaces that set for this
// evaluation (input.policies takes precedence over data.goambient.config.policies in authz.rego).
type Input struct {
	RootNamespace string
	Policies      []map[string]any
	Request       policies.Request
}

// Evaluator is authz.rego prepared for evaluation. It is safe for concurrent use.
type Evaluator struct {
	query    rego.PreparedEvalQuery
	prepared bool // a policy set is stored in data.goambient.config
}

// New prepares the reference for evaluations that each carry their policies (Input.Policies).
func New(ctx context.Context) (*Evaluator, error) {
	return prepare(ctx, nil, false)
}

// NewWithPolicies prepares the reference with a fixed policy set, stored once in OPA's store
// as data.goambient.config = {root_namespace, policies}; each Decide then sends only the
// request as input. The objects are copied through JSON, so later changes to them do not matter.
func NewWithPolicies(ctx context.Context, rootNamespace string, objs []map[string]any) (*Evaluator, error) {
	pols, err := jsonValue(nonNil(objs))
	if err != nil {
		return nil, fmt.Errorf("rego: policies: %w", err)
	}
	config := map[string]any{
		"goambient": map[string]any{
			"config": map[string]any{"root_namespace": rootNamespace, "policies": pols},
		},
	}
	return prepare(ctx, config, true)
}

func prepare(ctx context.Context, data map[string]any, prepared bool) (*Evaluator, error) {
	opts := []func(*rego.Rego){
		rego.Query(Query),
		rego.Module("authz.rego", module),
		rego.SetRegoVersion(ast.RegoV1),
	}
	if data != nil {
		// The values are plain JSON (jsonValue), so the store can hold them as AST values and
		// skip converting them again on every read.
		store := inmem.NewFromObjectWithOpts(data, inmem.OptRoundTripOnWrite(false), inmem.OptReturnASTValuesOnRead(true))
		opts = append(opts, rego.Store(store))
	}
	pq, err := rego.New(opts...).PrepareForEval(ctx)
	if err != nil {
		return nil, fmt.Errorf("rego: prepare %s: %w", Query, err)
	}
	return &Evaluator{query: pq, prepared: prepared}, nil
}

// Decide evaluates in and returns the decision authz.rego computes. The request is sent as the
// encoding/json form of policies.Request, which is the input contract (README.md).
func (e *Evaluator) Decide(ctx context.Context, in Input) (policies.Decision, error) {
	var pols *ast.Term
	if in.Policies != nil || !e.prepared {
		v, err := PolicySet(in.Policies)
		if err != nil {
			return policies.Decision{}, err
		}
		pols = v.term
	}
	return e.decide(ctx, in.RootNamespace, pols, &in.Request)
}

// Policies is a policy set converted once to OPA's value form, for evaluating many requests
// against the same policies with DecideSet (the differential test does).
type Policies struct{ term *ast.Term }

// PolicySet converts AuthorizationPolicy objects (their Kubernetes JSON values) for DecideSet.
func PolicySet(objs []map[string]any) (Policies, error) {
	v, err := jsonValue(nonNil(objs))
	if err != nil {
		return Policies{}, fmt.Errorf("rego: policies: %w", err)
	}
	av, err := ast.InterfaceToValue(v)
	if err != nil {
		return Policies{}, fmt.Errorf("rego: policies: %w", err)
	}
	return Policies{term: ast.NewTerm(av)}, nil
}

// DecideSet is Decide with the policies of set, which replace a prepared set if there is one.
func (e *Evaluator) DecideSet(ctx context.Context, rootNamespace string, set Policies, req *policies.Request) (policies.Decision, error) {
	if set.term == nil {
		return policies.Decision{}, errors.New("rego: DecideSet needs a set made by PolicySet")
	}
	return e.decide(ctx, rootNamespace, set.term, req)
}

// decide builds the input {request, root_namespace?, policies?} and evaluates the decision.
func (e *Evaluator) decide(ctx context.Context, root string, pols *ast.Term, req *policies.Request) (policies.Decision, error) {
	r, err := jsonValue(req)
	if err != nil {
		return policies.Decision{}, fmt.Errorf("rego: request: %w", err)
	}
	rv, err := ast.InterfaceToValue(r)
	if err != nil {
		return policies.Decision{}, fmt.Errorf("rego: request: %w", err)
	}
	input := ast.NewObject(ast.Item(ast.InternedTerm("request"), ast.NewTerm(rv)))
	if root != "" {
		input.Insert(ast.InternedTerm("root_namespace"), ast.StringTerm(root))
	}
	if pols != nil {
		input.Insert(ast.InternedTerm("policies"), pols)
	}
	rs, err := e.query.Eval(ctx, rego.EvalParsedInput(input))
	if err != nil {
		return policies.Decision{}, fmt.Errorf("rego: eval: %w", err)
	}
	if len(rs) != 1 || len(rs[0].Expressions) != 1 {
		return policies.Decision{}, errors.New("rego: " + Query + " is undefined")
	}
	return decode(rs[0].Expressions[0].Value)
}

// decode turns the Rego value into a Decision, refusing fields the Go type does not have, so
// that the Rego output and the Go type cannot drift apart unnoticed.
func decode(v any) (policies.Decision, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return policies.Decision{}, fmt.Errorf("rego: decision: %w", err)
	}
	var d policies.Decision
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&d); err != nil {
		return policies.Decision{}, fmt.Errorf("rego: decision %s: %w", b, err)
	}
	return d, nil
}

// jsonValue is x as the generic value of its encoding/json form (json.Number for numbers).
func jsonValue(x any) (any, error) {
	b, err := json.Marshal(x)
	if err != nil {
		return nil, err
	}
	var v any
	if err := util.UnmarshalJSON(b, &v); err != nil {
		return nil, err
	}
	return v, nil
}

func nonNil(objs []map[string]any) []map[string]any {
	if objs == nil {
		return []map[string]any{}
	}
	return objs
}
