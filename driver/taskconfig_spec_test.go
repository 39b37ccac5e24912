package driver_test

import (
	"reflect"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/nomad/plugins/shared/hclspec"

	"github.com/modelnodes/modelnodes/driver"
	"github.com/modelnodes/modelnodes/driver/taskconfig"
)

// specKeys lists the keys of an hclspec object, blocks as "parent.key", with
// each attribute's HCL type ("block" for a block).
func specKeys(t *testing.T, prefix string, s *hclspec.Spec, into map[string]string) {
	t.Helper()
	obj := s.GetObject()
	if obj == nil {
		t.Fatalf("%s: the spec is not an object", prefix)
	}
	for key, spec := range obj.GetAttributes() {
		if d := spec.GetDefault(); d != nil {
			spec = d.GetPrimary()
		}
		switch {
		case spec.GetAttr() != nil:
			if spec.GetAttr().GetName() != key {
				t.Errorf("spec %s%s names its attribute %q", prefix, key, spec.GetAttr().GetName())
			}
			into[prefix+key] = spec.GetAttr().GetType()
		case spec.GetBlockValue() != nil:
			into[prefix+key] = "block"
			specKeys(t, prefix+key+".", spec.GetBlockValue().GetNested(), into)
		default:
			t.Errorf("spec %s%s: neither an attribute nor a block", prefix, key)
		}
	}
}

// structKeys lists the codec keys of a taskconfig struct the same way.
func structKeys(t *testing.T, prefix string, typ reflect.Type, into map[string]string) {
	t.Helper()
	for i := range typ.NumField() {
		f := typ.Field(i)
		key := f.Tag.Get("codec")
		switch f.Type.Kind() {
		case reflect.String:
			into[prefix+key] = "string"
		case reflect.Bool:
			into[prefix+key] = "bool"
		case reflect.Int:
			into[prefix+key] = "number"
		case reflect.Slice:
			into[prefix+key] = "list(" + f.Type.Elem().Kind().String() + ")"
		case reflect.Pointer:
			into[prefix+key] = "block"
			structKeys(t, prefix+key+".", f.Type.Elem(), into)
		default:
			t.Fatalf("taskconfig field %s has a kind the test does not know: %s", f.Name, f.Type)
		}
	}
}

// The driver's HCL spec and taskconfig.Config, which the job builder
// writes, name the same keys with the same types: a key on one side only
// would be refused by Nomad or silently dropped.
func TestTaskConfigSpecMatchesTheStruct(t *testing.T) {
	schema, err := driver.NewWithIsolator(hclog.NewNullLogger(), nil).TaskConfigSchema()
	if err != nil {
		t.Fatal(err)
	}
	spec, fields := map[string]string{}, map[string]string{}
	specKeys(t, "", schema, spec)
	structKeys(t, "", reflect.TypeFor[taskconfig.Config](), fields)
	for key, typ := range spec {
		if fields[key] != typ {
			t.Errorf("spec key %s (%s): taskconfig has %q", key, typ, fields[key])
		}
	}
	for key, typ := range fields {
		if _, ok := spec[key]; !ok {
			t.Errorf("taskconfig key %s (%s) is not in the driver's spec", key, typ)
		}
	}
	if _, ok := spec["tls.vault.sign_path"]; len(spec) < 20 || !ok {
		t.Fatalf("the spec walk found too little: %v", spec)
	}
}
