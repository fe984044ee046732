package kube_test

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// protoDiff lists, field by field, where two messages of the same type differ: one line per
// leaf, "path: a ≠ b" (a value absent on one side is "∅"). Byte fields of 4 or 16 bytes are
// shown as IP addresses. Lists are compared in order; normalise them first where order means
// nothing.
func protoDiff(path string, a, b proto.Message) []string {
	return msgDiff(path, a.ProtoReflect(), b.ProtoReflect())
}

func msgDiff(path string, a, b protoreflect.Message) []string {
	var out []string
	fields := a.Descriptor().Fields()
	for i := range fields.Len() {
		f := fields.Get(i)
		p := join(path, string(f.Name()))
		ha, hb := a.Has(f), b.Has(f)
		if !ha && !hb {
			continue
		}
		switch {
		case f.IsList():
			la, lb := a.Get(f).List(), b.Get(f).List()
			for j := range max(la.Len(), lb.Len()) {
				pj := fmt.Sprintf("%s[%d]", p, j)
				switch {
				case j >= la.Len():
					out = append(out, fmt.Sprintf("%s: ∅ ≠ %s", pj, show(f, lb.Get(j))))
				case j >= lb.Len():
					out = append(out, fmt.Sprintf("%s: %s ≠ ∅", pj, show(f, la.Get(j))))
				default:
					out = append(out, valueDiff(pj, f, la.Get(j), lb.Get(j))...)
				}
			}
		case f.IsMap():
			ma, mb := a.Get(f).Map(), b.Get(f).Map()
			keys := map[string]protoreflect.MapKey{}
			ma.Range(func(k protoreflect.MapKey, _ protoreflect.Value) bool { keys[k.String()] = k; return true })
			mb.Range(func(k protoreflect.MapKey, _ protoreflect.Value) bool { keys[k.String()] = k; return true })
			names := make([]string, 0, len(keys))
			for k := range keys {
				names = append(names, k)
			}
			sort.Strings(names)
			for _, k := range names {
				pk := fmt.Sprintf("%s[%s]", p, k)
				va, oka := ma.Get(keys[k]), ma.Has(keys[k])
				vb, okb := mb.Get(keys[k]), mb.Has(keys[k])
				switch {
				case !oka:
					out = append(out, fmt.Sprintf("%s: ∅ ≠ %s", pk, show(f.MapValue(), vb)))
				case !okb:
					out = append(out, fmt.Sprintf("%s: %s ≠ ∅", pk, show(f.MapValue(), va)))
				default:
					out = append(out, valueDiff(pk, f.MapValue(), va, vb)...)
				}
			}
		case !ha:
			out = append(out, fmt.Sprintf("%s: ∅ ≠ %s", p, show(f, b.Get(f))))
		case !hb:
			out = append(out, fmt.Sprintf("%s: %s ≠ ∅", p, show(f, a.Get(f))))
		default:
			out = append(out, valueDiff(p, f, a.Get(f), b.Get(f))...)
		}
	}
	return out
}

func valueDiff(path string, f protoreflect.FieldDescriptor, a, b protoreflect.Value) []string {
	if f.Kind() == protoreflect.MessageKind || f.Kind() == protoreflect.GroupKind {
		return msgDiff(path, a.Message(), b.Message())
	}
	if f.Kind() == protoreflect.BytesKind {
		if bytes.Equal(a.Bytes(), b.Bytes()) {
			return nil
		}
	} else if a.Interface() == b.Interface() {
		return nil
	}
	return []string{fmt.Sprintf("%s: %s ≠ %s", path, show(f, a), show(f, b))}
}

func show(f protoreflect.FieldDescriptor, v protoreflect.Value) string {
	switch f.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		s := strings.Join(strings.Fields(fmt.Sprint(v.Message().Interface())), " ")
		return "{" + s + "}"
	case protoreflect.BytesKind:
		if ip, ok := netip.AddrFromSlice(v.Bytes()); ok {
			return ip.String()
		}
		return fmt.Sprintf("%x", v.Bytes())
	case protoreflect.EnumKind:
		if ev := f.Enum().Values().ByNumber(v.Enum()); ev != nil {
			return string(ev.Name())
		}
	case protoreflect.StringKind:
		return fmt.Sprintf("%q", v.String())
	}
	return fmt.Sprint(v.Interface())
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// sortedStrings is a sorted copy.
func sortedStrings(s []string) []string { return slices.Sorted(slices.Values(s)) }
