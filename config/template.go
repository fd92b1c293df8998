package config

import (
	"errors"

	"github.com/hashicorp/hcl/v2"
)

// Scope is what a route expression sees when it is evaluated for one
// connection: claims.*, path.*, query.*, header.* (header names lower-case).
type Scope struct {
	Claims map[string]any
	Path   map[string]string
	Query  map[string]string
	Header map[string]string
}

// Template is a route expression (e.g. channels = ["room:${path.room}"])
// kept unevaluated until a connection supplies its Scope.
type Template struct {
	expr hcl.Expression
}

// Eval evaluates the expression as a list of strings for one connection.
func (t *Template) Eval(s Scope) ([]string, error) {
	return nil, errors.New("config: Template.Eval not implemented yet") // owned by the config work in progress
}
