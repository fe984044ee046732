package jwtauthn

// status is a verification outcome, named after Envoy's jwt_verify_lib Status; String is
// Envoy's message (the 401's body).
type status int

const (
	ok status = iota
	jwtMissed
	jwtExpired
	jwtNotYetValid
	jwtBadFormat
	jwtVerificationFail
	jwtUnknownIssuer
	audiencesNotAllowed
	jwksKidAlgMismatch
	jwksFetchFail
	jwtHeaderBadAlg
)

func (s status) String() string {
	switch s {
	case ok:
		return "OK"
	case jwtMissed:
		return "Jwt is missing"
	case jwtExpired:
		return "Jwt is expired"
	case jwtNotYetValid:
		return "Jwt not yet valid"
	case jwtBadFormat:
		return "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
	case jwtUnknownIssuer:
		return "Jwt issuer is not configured"
	case audiencesNotAllowed:
		return "Audiences in Jwt are not allowed"
	case jwksKidAlgMismatch:
		return "Jwks doesn't have key to match kid or alg from Jwt"
	case jwksFetchFail:
		return "Jwks remote fetch is failed"
	case jwtHeaderBadAlg:
		return "Jwt header [alg] is not supported"
	default:
		return "Jwt verification fails"
	}
}
