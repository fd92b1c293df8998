package auth

import (
	"reflect"
	"strings"
	"testing"
)

func TestExtractTokenOrder(t *testing.T) {
	all := mapRequest{
		headers: map[string]string{
			"Authorization":          "Bearer from-header",
			"Sec-WebSocket-Protocol": "chat.v1, bearer, from-protocol",
		},
		cookies: map[string]string{"sid": "from-cookie"},
		query:   map[string]string{"access_token": "from-query"},
	}
	cases := []struct {
		name       string
		sources    []string
		req        mapRequest
		tok, where string
	}{
		{"header first", []string{"header", "protocol", "cookie:sid", "query:access_token"}, all, "from-header", "header"},
		{"protocol first", []string{"protocol", "header"}, all, "from-protocol", "protocol"},
		{"cookie first", []string{"cookie:sid", "header"}, all, "from-cookie", "cookie:sid"},
		{"query first", []string{"query:access_token", "header"}, all, "from-query", "query:access_token"},
		{"empty sources skip to the next", []string{"cookie:other", "query:other", "header"}, all, "from-header", "header"},
		{"unknown source ignored", []string{"body", "query:access_token"}, all, "from-query", "query:access_token"},
		{"nothing", []string{"header", "protocol"}, mapRequest{}, "", ""},
		{"no sources", nil, all, "", ""},
		{"bearer scheme is case-insensitive", []string{"header"}, mapRequest{headers: map[string]string{"Authorization": "bEaReR   tok  "}}, "tok", "header"},
		{"tab after scheme", []string{"header"}, mapRequest{headers: map[string]string{"Authorization": "Bearer\ttok"}}, "tok", "header"},
		{"other scheme", []string{"header", "query:t"}, mapRequest{headers: map[string]string{"Authorization": "Basic dXNlcjpwYXNz"}, query: map[string]string{"t": "q"}}, "q", "query:t"},
		{"Bearerx is another scheme", []string{"header"}, mapRequest{headers: map[string]string{"Authorization": "Bearerx tok"}}, "", ""},
		{"bare Bearer", []string{"header"}, mapRequest{headers: map[string]string{"Authorization": "Bearer "}}, "", ""},
		{"protocol marker case-insensitive", []string{"protocol"}, mapRequest{headers: map[string]string{"Sec-WebSocket-Protocol": "Bearer,tok,chat"}}, "tok", "protocol"},
		{"protocol marker last", []string{"protocol", "header"}, mapRequest{headers: map[string]string{"Sec-WebSocket-Protocol": "chat, bearer", "Authorization": "Bearer h"}}, "h", "header"},
		{"protocol empty entries", []string{"protocol"}, mapRequest{headers: map[string]string{"Sec-WebSocket-Protocol": " , bearer , , tok "}}, "tok", "protocol"},
		{"protocol without marker", []string{"protocol"}, mapRequest{headers: map[string]string{"Sec-WebSocket-Protocol": "chat.v1, tok"}}, "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tok, where := ExtractToken(c.sources, c.req)
			if tok != c.tok || where != c.where {
				t.Errorf("ExtractToken = (%q, %q), want (%q, %q)", tok, where, c.tok, c.where)
			}
		})
	}
}

func TestExtractTokenDoesNotAllocate(t *testing.T) {
	var r Request = mapRequest{headers: map[string]string{"Sec-WebSocket-Protocol": "chat.v1, bearer, tok"}}
	sources := []string{"header", "cookie:sid", "protocol"}
	if n := testing.AllocsPerRun(100, func() { ExtractToken(sources, r) }); n != 0 {
		t.Errorf("ExtractToken allocates %v times", n)
	}
}

func TestOfferedProtocolsAndStripBearer(t *testing.T) {
	cases := []struct {
		header          string
		offered, strip  []string
		selected        string
		supportedForSel []string
	}{
		{"", nil, nil, "", []string{"chat.v1"}},
		{"chat.v1", []string{"chat.v1"}, []string{"chat.v1"}, "chat.v1", []string{"chat.v1"}},
		{"bearer, eyJ.a.b, chat.v1", []string{"bearer", "eyJ.a.b", "chat.v1"}, []string{"chat.v1"}, "chat.v1", []string{"chat.v1"}},
		{"chat.v2,BEARER,eyJ.a.b ,  chat.v1", []string{"chat.v2", "BEARER", "eyJ.a.b", "chat.v1"}, []string{"chat.v2", "chat.v1"}, "chat.v1", []string{"chat.v1"}},
		// Only the bearer pair offered: echo the marker (browsers need a
		// protocol back), never the token.
		{"bearer, eyJ.a.b", []string{"bearer", "eyJ.a.b"}, []string{}, "bearer", []string{"chat.v1"}},
		{"Bearer, eyJ.a.b", []string{"Bearer", "eyJ.a.b"}, []string{}, "Bearer", nil},
		// Real protocols offered, none supported: no protocol, as RFC 6455 intends.
		{"bearer, eyJ.a.b, chat.v9", []string{"bearer", "eyJ.a.b", "chat.v9"}, []string{"chat.v9"}, "", []string{"chat.v1"}},
		// The token is skipped even if it looks like a supported protocol.
		{"bearer, chat.v1", []string{"bearer", "chat.v1"}, []string{}, "bearer", []string{"chat.v1"}},
		{"bearer", []string{"bearer"}, []string{}, "bearer", nil},
		{"bearer, bearer, bearer, x", []string{"bearer", "bearer", "bearer", "x"}, []string{}, "bearer", []string{"x"}},
		{" , ,", nil, nil, "", nil},
	}
	for _, c := range cases {
		offered := OfferedProtocols(c.header)
		if !reflect.DeepEqual(offered, c.offered) {
			t.Errorf("OfferedProtocols(%q) = %q, want %q", c.header, offered, c.offered)
			continue
		}
		before := append([]string(nil), offered...)
		stripped := StripBearer(offered)
		if len(stripped) != len(c.strip) || (len(c.strip) > 0 && !reflect.DeepEqual(stripped, c.strip)) {
			t.Errorf("StripBearer(%q) = %q, want %q", offered, stripped, c.strip)
		}
		if !reflect.DeepEqual(offered, before) {
			t.Errorf("StripBearer modified its input: %q", offered)
		}
		if got := SelectSubprotocol(offered, c.supportedForSel); got != c.selected {
			t.Errorf("SelectSubprotocol(%q, %q) = %q, want %q", offered, c.supportedForSel, got, c.selected)
		}
	}
}

func TestRedactQuery(t *testing.T) {
	names := []string{"access_token", "jwt"}
	cases := []struct{ in, want string }{
		{"", ""},
		{"room=1", "room=1"},
		{"access_token=eyJ.a.b", "access_token=REDACTED"},
		{"room=1&access_token=eyJ.a.b&x=2", "room=1&access_token=REDACTED&x=2"},
		{"access_token=a&access_token=b", "access_token=REDACTED&access_token=REDACTED"},
		{"ACCESS_TOKEN=a", "ACCESS_TOKEN=REDACTED"},
		{"access%5Ftoken=a&acc%65ss_token=b", "access%5Ftoken=REDACTED&acc%65ss_token=REDACTED"},
		{"room=1;jwt=eyJ", "room=1;jwt=REDACTED"},
		{"access_token", "access_token"},
		{"access_token=", "access_token="},
		{"access_tokens=keep&xaccess_token=keep", "access_tokens=keep&xaccess_token=keep"},
		{"a=access_token%3Dkeep", "a=access_token%3Dkeep"},
		{"&&access_token=x&&", "&&access_token=REDACTED&&"},
		{"access_token=a=b=c&z", "access_token=REDACTED&z"},
		{"%zz=1&jwt=t", "%zz=1&jwt=REDACTED"},
	}
	for _, c := range cases {
		if got := RedactQuery(c.in, names); got != c.want {
			t.Errorf("RedactQuery(%q) = %q, want %q", c.in, got, c.want)
		}
	}
	if got := RedactQuery("access_token=x", nil); got != "access_token=x" {
		t.Errorf("no names: %q", got)
	}
	q := "room=1&x=2"
	if n := testing.AllocsPerRun(100, func() { RedactQuery(q, names) }); n != 0 {
		t.Errorf("RedactQuery without a match allocates %v times", n)
	}
}

func TestValidateSourcesAndQueryNames(t *testing.T) {
	if err := ValidateSources(DefaultSources); err != nil {
		t.Errorf("defaults: %v", err)
	}
	if err := ValidateSources([]string{"header", "cookie:sid", "query:t", "protocol"}); err != nil {
		t.Error(err)
	}
	err := ValidateSources([]string{"Header", "cookie:", "query:", "body"})
	for _, s := range []string{`"Header"`, `"cookie:"`, `"query:"`, `"body"`} {
		if err == nil || !strings.Contains(err.Error(), s) {
			t.Errorf("error %v does not name %s", err, s)
		}
	}
	if got := QueryNames([]string{"header", "query:a", "cookie:b", "query:c"}); !reflect.DeepEqual(got, []string{"a", "c"}) {
		t.Errorf("QueryNames = %q", got)
	}
}

func BenchmarkExtractToken(b *testing.B) {
	var r Request = mapRequest{headers: map[string]string{"Sec-WebSocket-Protocol": "chat.v1, bearer, eyJhbGciOiJIUzI1NiJ9.e30.sig"}}
	b.ReportAllocs()
	for b.Loop() {
		ExtractToken(DefaultSources, r)
	}
}
