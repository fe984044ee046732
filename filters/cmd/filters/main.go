// Command filters is filters.so: every goambient Envoy Go HTTP filter, registered under its plugin_name, built with -buildmode=c-shared.
package main

import (
	"github.com/envoyproxy/envoy/contrib/golang/filters/http/source/go/pkg/http"

	"github.com/goambient/goambient/filters/authz"
	"github.com/goambient/goambient/filters/authzconfig"
	"github.com/goambient/goambient/filters/istiostats"
)

func init() {
	// The name must be the plugin_name Envoy is given, or Envoy passes every request through:
	// filters/authz's TestRegisteredName checks this call, and the built library.
	http.RegisterHttpFilterFactoryAndConfigParser(authzconfig.PluginName, authz.Factory, authz.Parser{})
	http.RegisterHttpFilterFactoryAndConfigParser(authzconfig.CustomPluginName, authz.CustomFactory, authz.Parser{})
	http.RegisterHttpFilterFactoryAndConfigParser(istiostats.PluginName, istiostats.Factory, istiostats.Parser{})
}

func main() {}
