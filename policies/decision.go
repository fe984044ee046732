package policies

// Action is what an AuthorizationPolicy does when it matches.
type Action string

// The actions of security.istio.io AuthorizationPolicy.
const (
	ActionAllow  Action = "ALLOW"
	ActionDeny   Action = "DENY"
	ActionAudit  Action = "AUDIT"
	ActionCustom Action = "CUSTOM"
)

// Reason says why a decision came out as it did.
type Reason string

// The reasons of a Decision.
const (
	ReasonNoPolicies     Reason = "no-policies"      // no ALLOW or DENY policy applies: allowed
	ReasonDenyMatched    Reason = "deny-matched"     // a DENY rule matched: denied
	ReasonAllowMatched   Reason = "allow-matched"    // an ALLOW rule matched: allowed
	ReasonNoAllowMatched Reason = "no-allow-matched" // ALLOW policies exist but none matched: denied
	ReasonBadRequest     Reason = "bad-request"      // the request itself is invalid (e.g. %00 in the path): denied
)

// RuleRef names one rule of one policy.
type RuleRef struct {
	Policy string `json:"policy"` // "ns/name"
	Rule   int    `json:"rule"`
}

// Decision is the outcome of evaluating a request. Its JSON form is what the Rego reference returns.
type Decision struct {
	Allowed bool   `json:"allowed"`
	Reason  Reason `json:"reason"`
	Action  Action `json:"action,omitempty"` // the action of the deciding policy; empty when none decided
	Policy  string `json:"policy,omitempty"` // "ns/name" of the deciding policy
	Rule    int    `json:"rule"`             // index of the deciding rule; -1 when none
	// Details is Envoy's response_code_details for a denial:
	// rbac_access_denied_matched_policy[ns[NS]-policy[NAME]-rule[IDX]] or ...[none].
	Details string `json:"details,omitempty"`

	// Custom is the first CUSTOM rule that matched: its provider must be consulted, and denies
	// the request if it says so. Empty when no CUSTOM policy matched.
	Custom         RuleRef `json:"custom,omitzero"`
	CustomProvider string  `json:"custom_provider,omitempty"`

	// Audit lists the AUDIT rules that matched, in Envoy's order.
	Audit []RuleRef `json:"audit,omitempty"`

	// DryRun is what the policies annotated istio.io/dry-run=true would have decided, on their own.
	DryRun DryRun `json:"dry_run,omitzero"`
}

// DryRun is the shadow decision of dry-run policies (Istio's shadow_engine_result).
type DryRun struct {
	Applied bool   `json:"applied"` // some dry-run policy applies to the request
	Allowed bool   `json:"allowed"`
	Policy  string `json:"policy,omitempty"`
	Rule    int    `json:"rule"`
	Details string `json:"details,omitempty"`
}
