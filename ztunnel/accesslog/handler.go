package accesslog

import (
	"context"
	"encoding"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"
)

// Format is the layout Handler writes.
type Format int

// The layouts of Istio's ztunnel (its LOG_FORMAT=plain and LOG_FORMAT=json).
const (
	// Text: <time>\t<level>\t<scope>\t<message>\t<k=v k=v ...>, strings quoted, addresses and
	// numbers bare; e.g.
	// 2024-05-04T09:59:05.028771Z	info	access	connection complete	src.addr=10.244.1.12:58508 src.workload="sleep" ...
	Text Format = iota
	// JSON: {"level":"info","time":"...","scope":"access","message":"connection complete","src.addr":"...",...}
	JSON
)

// HandlerOptions configure a Handler.
type HandlerOptions struct {
	Format Format
	Level  slog.Leveler // minimum level; nil means INFO
	// Scope is printed for lines that carry no "scope" attribute; empty means "default".
	Scope string
}

// Handler is a slog.Handler that writes Istio ztunnel's log layout. Groups are flattened into
// dotted keys ("src" + "addr" → "src.addr"); a top-level "scope" attribute fills the scope
// column (the record's wins over the logger's). It is safe for concurrent use.
type Handler struct {
	opts   HandlerOptions
	mu     *sync.Mutex
	w      io.Writer
	scope  string
	prefix string      // group prefix for attributes added from now on, "a.b."
	attrs  []slog.Attr // attributes from WithAttrs, keys already prefixed
}

// NewHandler returns a Handler writing to w.
func NewHandler(w io.Writer, opts *HandlerOptions) *Handler {
	h := &Handler{mu: &sync.Mutex{}, w: w}
	if opts != nil {
		h.opts = *opts
	}
	h.scope = h.opts.Scope
	if h.scope == "" {
		h.scope = "default"
	}
	return h
}

// Enabled reports whether level is at or above the handler's minimum.
func (h *Handler) Enabled(_ context.Context, level slog.Level) bool {
	threshold := slog.LevelInfo
	if h.opts.Level != nil {
		threshold = h.opts.Level.Level()
	}
	return level >= threshold
}

// WithAttrs returns a handler that adds attrs to every line.
func (h *Handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append([]slog.Attr(nil), h.attrs...)
	for _, a := range attrs {
		if h.prefix == "" && a.Key == ScopeKey {
			c.scope = a.Value.Resolve().String()
			continue
		}
		c.attrs = flatten(c.attrs, h.prefix, a)
	}
	return &c
}

// WithGroup returns a handler whose later attributes are prefixed with name + ".".
func (h *Handler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	c := *h
	c.prefix = h.prefix + name + "."
	return &c
}

// Handle writes one line.
func (h *Handler) Handle(_ context.Context, r slog.Record) error {
	scope := h.scope
	fields := append([]slog.Attr(nil), h.attrs...)
	r.Attrs(func(a slog.Attr) bool {
		if h.prefix == "" && a.Key == ScopeKey {
			scope = a.Value.Resolve().String()
			return true
		}
		fields = flatten(fields, h.prefix, a)
		return true
	})
	t := r.Time
	if t.IsZero() {
		t = time.Now()
	}
	ts := t.UTC().Format("2006-01-02T15:04:05.000000Z")

	buf := make([]byte, 0, 512)
	if h.opts.Format == JSON {
		buf = append(buf, `{"level":`...)
		buf = appendJSONString(buf, levelName(r.Level))
		buf = append(buf, `,"time":`...)
		buf = appendJSONString(buf, ts)
		buf = append(buf, `,"scope":`...)
		buf = appendJSONString(buf, scope)
		buf = append(buf, `,"message":`...)
		buf = appendJSONString(buf, r.Message)
		for _, a := range fields {
			buf = append(buf, ',')
			buf = appendJSONString(buf, a.Key)
			buf = append(buf, ':')
			buf = appendJSONValue(buf, a.Value)
		}
		buf = append(buf, "}\n"...)
	} else {
		buf = append(buf, ts...)
		buf = append(buf, '\t')
		buf = append(buf, levelName(r.Level)...)
		buf = append(buf, '\t')
		buf = append(buf, scope...)
		if r.Message != "" || len(fields) > 0 {
			buf = append(buf, '\t')
			buf = append(buf, r.Message...)
		}
		for i, a := range fields {
			if i == 0 {
				buf = append(buf, '\t')
			} else {
				buf = append(buf, ' ')
			}
			buf = append(buf, a.Key...)
			buf = append(buf, '=')
			buf = appendTextValue(buf, a.Value)
		}
		buf = append(buf, '\n')
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	_, err := h.w.Write(buf)
	return err
}

// flatten appends a (resolved; groups flattened into dotted keys) to dst.
func flatten(dst []slog.Attr, prefix string, a slog.Attr) []slog.Attr {
	a.Value = a.Value.Resolve()
	if a.Value.Kind() == slog.KindGroup {
		p := prefix
		if a.Key != "" {
			p = prefix + a.Key + "."
		}
		for _, g := range a.Value.Group() {
			dst = flatten(dst, p, g)
		}
		return dst
	}
	if a.Equal(slog.Attr{}) {
		return dst
	}
	a.Key = prefix + a.Key
	return append(dst, a)
}

// levelName is ztunnel's lower-case level.
func levelName(l slog.Level) string {
	switch {
	case l >= slog.LevelError:
		return "error"
	case l >= slog.LevelWarn:
		return "warn"
	case l >= slog.LevelInfo:
		return "info"
	case l >= slog.LevelDebug:
		return "debug"
	}
	return "trace"
}

// appendTextValue writes strings and errors quoted (ztunnel prints them with Debug), and
// numbers, booleans, times, durations and Stringers such as addresses bare (Display).
func appendTextValue(buf []byte, v slog.Value) []byte {
	switch v.Kind() {
	case slog.KindString:
		return strconv.AppendQuote(buf, v.String())
	case slog.KindInt64:
		return strconv.AppendInt(buf, v.Int64(), 10)
	case slog.KindUint64:
		return strconv.AppendUint(buf, v.Uint64(), 10)
	case slog.KindFloat64:
		return strconv.AppendFloat(buf, v.Float64(), 'g', -1, 64)
	case slog.KindBool:
		return strconv.AppendBool(buf, v.Bool())
	case slog.KindDuration:
		return append(buf, v.Duration().String()...)
	case slog.KindTime:
		return append(buf, v.Time().UTC().Format(time.RFC3339Nano)...)
	}
	switch x := v.Any().(type) {
	case error:
		return strconv.AppendQuote(buf, x.Error())
	case fmt.Stringer:
		return append(buf, x.String()...)
	}
	return strconv.AppendQuote(buf, fmt.Sprintf("%+v", v.Any()))
}

// appendJSONValue writes numbers and booleans as such and everything else as a string.
func appendJSONValue(buf []byte, v slog.Value) []byte {
	switch v.Kind() {
	case slog.KindString:
		return appendJSONString(buf, v.String())
	case slog.KindInt64:
		return strconv.AppendInt(buf, v.Int64(), 10)
	case slog.KindUint64:
		return strconv.AppendUint(buf, v.Uint64(), 10)
	case slog.KindFloat64:
		return strconv.AppendFloat(buf, v.Float64(), 'g', -1, 64)
	case slog.KindBool:
		return strconv.AppendBool(buf, v.Bool())
	case slog.KindDuration:
		return appendJSONString(buf, v.Duration().String())
	case slog.KindTime:
		return appendJSONString(buf, v.Time().UTC().Format(time.RFC3339Nano))
	}
	switch x := v.Any().(type) {
	case error:
		return appendJSONString(buf, x.Error())
	case json.Marshaler:
		if b, err := x.MarshalJSON(); err == nil && json.Valid(b) {
			return append(buf, b...)
		}
	case encoding.TextMarshaler:
		if b, err := x.MarshalText(); err == nil {
			return appendJSONString(buf, string(b))
		}
	case fmt.Stringer:
		return appendJSONString(buf, x.String())
	}
	if b, err := json.Marshal(v.Any()); err == nil {
		return append(buf, b...)
	}
	return appendJSONString(buf, fmt.Sprintf("%+v", v.Any()))
}

// appendJSONString writes s as a JSON string, without the HTML escaping of encoding/json.
func appendJSONString(buf []byte, s string) []byte {
	const hex = "0123456789abcdef"
	buf = append(buf, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				buf = append(buf, '\\', c)
			case c == '\n':
				buf = append(buf, '\\', 'n')
			case c == '\r':
				buf = append(buf, '\\', 'r')
			case c == '\t':
				buf = append(buf, '\\', 't')
			case c < 0x20:
				buf = append(buf, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xF])
			default:
				buf = append(buf, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			buf = append(buf, `\ufffd`...)
		} else {
			buf = append(buf, s[i:i+size]...)
		}
		i += size
	}
	return append(buf, '"')
}

var _ slog.Handler = (*Handler)(nil)
