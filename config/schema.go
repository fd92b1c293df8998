package config

import "github.com/hashicorp/hcl/v2"

// The raw structs below are what gohcl decodes sidecar.hcl into. Their
// `hcl` tags ARE the schema: gohcl derives the accepted attribute and block
// names from them (anything else is an "Unsupported argument" error) and
// reference_test.go checks them against the documentation in reference.go.
//
// Attributes are kept as *hcl.Attribute (nil when absent) rather than
// decoded Go values so that convert.go can evaluate each one itself and
// point every diagnostic at the attribute's own file:line:col, and so that
// expressions evaluated per connection (route channels, stream paths) stay
// unevaluated. gohcl treats *hcl.Attribute fields as optional, so required
// attributes are checked in convert.go (with a message saying what to
// write). The comment on each field gives the HCL type convert.go expects.

// rawFile is the top level of sidecar.hcl.
type rawFile struct {
	Listener  *rawListener  `hcl:"listener,block"`
	Admin     *rawAdmin     `hcl:"admin,block"`
	Backend   *rawBackend   `hcl:"backend,block"` // required; checked in convert.go for a clearer message
	Origins   *rawOrigins   `hcl:"origins,block"`
	JWT       *rawJWT       `hcl:"jwt,block"`
	Limits    *rawLimits    `hcl:"limits,block"`
	Heartbeat *rawHeartbeat `hcl:"heartbeat,block"`
	Drain     *rawDrain     `hcl:"drain,block"`
	Log       *rawLog       `hcl:"log,block"`
	Routes    []*rawRoute   `hcl:"route,block"` // at least one; checked in convert.go
	Streams   []*rawStream  `hcl:"stream,block"`
	Cluster   *rawCluster   `hcl:"cluster,block"`
}

type rawListener struct {
	Address          *hcl.Attribute `hcl:"address,optional"`           // string host:port
	HandshakeTimeout *hcl.Attribute `hcl:"handshake_timeout,optional"` // duration
	MaxHeaderSize    *hcl.Attribute `hcl:"max_header_size,optional"`   // size
	ReadBufferSize   *hcl.Attribute `hcl:"read_buffer_size,optional"`  // size
	WriteBufferSize  *hcl.Attribute `hcl:"write_buffer_size,optional"` // size
	Compression      *hcl.Attribute `hcl:"compression,optional"`       // bool
	TLS              *rawTLS        `hcl:"tls,block"`
	DefRange         hcl.Range      `hcl:",def_range"`
}

type rawTLS struct {
	CertFile *hcl.Attribute `hcl:"cert_file,optional"` // string path, required
	KeyFile  *hcl.Attribute `hcl:"key_file,optional"`  // string path, required
	DefRange hcl.Range      `hcl:",def_range"`
}

type rawAdmin struct {
	Address *hcl.Attribute `hcl:"address,optional"` // string host:port
	Token   *hcl.Attribute `hcl:"token,optional"`   // string secret
}

type rawBackend struct {
	URL                *hcl.Attribute `hcl:"url,optional"`                  // string URL, required
	Timeout            *hcl.Attribute `hcl:"timeout,optional"`              // duration
	MaxConns           *hcl.Attribute `hcl:"max_conns,optional"`            // number
	SigningSecret      *hcl.Attribute `hcl:"signing_secret,optional"`       // string secret
	ForwardHeaders     *hcl.Attribute `hcl:"forward_headers,optional"`      // list(string)
	DisconnectQueue    *hcl.Attribute `hcl:"disconnect_queue,optional"`     // number
	DisconnectRetryMax *hcl.Attribute `hcl:"disconnect_retry_max,optional"` // duration
	Breaker            *rawBreaker    `hcl:"breaker,block"`
	DefRange           hcl.Range      `hcl:",def_range"`
}

type rawBreaker struct {
	Enabled          *hcl.Attribute `hcl:"enabled,optional"`            // bool
	Failures         *hcl.Attribute `hcl:"failures,optional"`           // number
	OpenTimeout      *hcl.Attribute `hcl:"open_timeout,optional"`       // duration
	HalfOpenRequests *hcl.Attribute `hcl:"half_open_requests,optional"` // number
	Interval         *hcl.Attribute `hcl:"interval,optional"`           // duration
}

type rawOrigins struct {
	Allow        *hcl.Attribute `hcl:"allow,optional"`         // list(string)
	AllowMissing *hcl.Attribute `hcl:"allow_missing,optional"` // bool
}

type rawJWT struct {
	Sources        *hcl.Attribute `hcl:"sources,optional"`         // list(string)
	Issuer         *hcl.Attribute `hcl:"issuer,optional"`          // string
	Audience       *hcl.Attribute `hcl:"audience,optional"`        // list(string)
	Leeway         *hcl.Attribute `hcl:"leeway,optional"`          // duration
	RequireExp     *hcl.Attribute `hcl:"require_exp,optional"`     // bool
	RequiredClaims *hcl.Attribute `hcl:"required_claims,optional"` // list(string)
	UserClaim      *hcl.Attribute `hcl:"user_claim,optional"`      // string
	Keys           []*rawJWTKey   `hcl:"key,block"`
	DefRange       hcl.Range      `hcl:",def_range"`
}

type rawJWTKey struct {
	Name               string         `hcl:"name,label"`
	NameRange          hcl.Range      `hcl:"name,label_range"`
	Algorithms         *hcl.Attribute `hcl:"algorithms,optional"`            // list(string), required
	KID                *hcl.Attribute `hcl:"kid,optional"`                   // string
	Secret             *hcl.Attribute `hcl:"secret,optional"`                // string secret
	PEMFile            *hcl.Attribute `hcl:"pem_file,optional"`              // string path
	JWKSURL            *hcl.Attribute `hcl:"jwks_url,optional"`              // string URL
	JWKSRefresh        *hcl.Attribute `hcl:"jwks_refresh,optional"`          // duration
	JWKSUnknownKIDWait *hcl.Attribute `hcl:"jwks_unknown_kid_wait,optional"` // duration
	DefRange           hcl.Range      `hcl:",def_range"`
}

type rawLimits struct {
	MaxConnections     *hcl.Attribute `hcl:"max_connections,optional"`      // number
	PerIPConnections   *hcl.Attribute `hcl:"per_ip_connections,optional"`   // number
	PerUserConnections *hcl.Attribute `hcl:"per_user_connections,optional"` // number
	HandshakeRate      *hcl.Attribute `hcl:"handshake_rate,optional"`       // rate
	HandshakeBurst     *hcl.Attribute `hcl:"handshake_burst,optional"`      // number
	MessageRate        *hcl.Attribute `hcl:"message_rate,optional"`         // rate
	MessageBurst       *hcl.Attribute `hcl:"message_burst,optional"`        // number
	ByteRate           *hcl.Attribute `hcl:"byte_rate,optional"`            // byte rate
	ByteBurst          *hcl.Attribute `hcl:"byte_burst,optional"`           // size
	RatePolicy         *hcl.Attribute `hcl:"rate_policy,optional"`          // enum
	MaxMessageSize     *hcl.Attribute `hcl:"max_message_size,optional"`     // size
	MaxInflatedSize    *hcl.Attribute `hcl:"max_inflated_size,optional"`    // size
	TrustedProxies     *hcl.Attribute `hcl:"trusted_proxies,optional"`      // list(string) CIDRs
	IdleEvict          *hcl.Attribute `hcl:"idle_evict,optional"`           // duration
	SendQueue          *hcl.Attribute `hcl:"send_queue,optional"`           // number
	SlowConsumer       *hcl.Attribute `hcl:"slow_consumer,optional"`        // enum
}

type rawHeartbeat struct {
	Interval *hcl.Attribute `hcl:"interval,optional"` // duration
	Timeout  *hcl.Attribute `hcl:"timeout,optional"`  // duration
}

type rawDrain struct {
	Window  *hcl.Attribute `hcl:"window,optional"`  // duration
	Timeout *hcl.Attribute `hcl:"timeout,optional"` // duration
}

type rawLog struct {
	Level  *hcl.Attribute `hcl:"level,optional"`  // enum
	Format *hcl.Attribute `hcl:"format,optional"` // enum
}

type rawRoute struct {
	Path         string         `hcl:"path,label"`
	PathRange    hcl.Range      `hcl:"path,label_range"`
	Auth         *hcl.Attribute `hcl:"auth,optional"`          // enum
	Subprotocols *hcl.Attribute `hcl:"subprotocols,optional"`  // list(string)
	OnConnect    *hcl.Attribute `hcl:"on_connect,optional"`    // string backend path
	OnMessage    *hcl.Attribute `hcl:"on_message,optional"`    // string backend path
	OnDisconnect *hcl.Attribute `hcl:"on_disconnect,optional"` // string backend path
	OnError      *hcl.Attribute `hcl:"on_error,optional"`      // enum
	MaxInFlight  *hcl.Attribute `hcl:"max_in_flight,optional"` // number
	Channels     *hcl.Attribute `hcl:"channels,optional"`      // expression, evaluated per connection
	Origins      *rawOrigins    `hcl:"origins,block"`
}

type rawStream struct {
	Name         string         `hcl:"name,label"`
	NameRange    hcl.Range      `hcl:"name,label_range"`
	Path         *hcl.Attribute `hcl:"path,optional"`          // string, required; may use claims/query/header
	Channel      *hcl.Attribute `hcl:"channel,optional"`       // string
	Prefix       *hcl.Attribute `hcl:"prefix,optional"`        // string
	Scope        *hcl.Attribute `hcl:"scope,optional"`         // enum
	ReconnectMin *hcl.Attribute `hcl:"reconnect_min,optional"` // duration
	ReconnectMax *hcl.Attribute `hcl:"reconnect_max,optional"` // duration
}

type rawCluster struct {
	NodeID   *hcl.Attribute `hcl:"node_id,optional"` // string
	Redis    *rawRedis      `hcl:"redis,block"`      // required: clustering means Redis
	DefRange hcl.Range      `hcl:",def_range"`
}

type rawRedis struct {
	URL      *hcl.Attribute `hcl:"url,optional"`    // string URL, required
	Prefix   *hcl.Attribute `hcl:"prefix,optional"` // string
	DefRange hcl.Range      `hcl:",def_range"`
}
