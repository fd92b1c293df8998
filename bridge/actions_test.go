package bridge

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestParseActions(t *testing.T) {
	long := strings.Repeat("é", 70) // 140 bytes
	cases := []struct {
		name string
		doc  string
		want *Actions
	}{
		{"empty body", "", nil},
		{"blank body", " \n", nil},
		{"empty object", `{}`, &Actions{}},
		{"full", `{"frames":[{"text":"hi"},{"binary":"AAEC"}],"subscribe":["room:1"],"unsubscribe":["room:0"],
			"user":"42","meta":{"tenant":"a"},"close":{"code":4001,"reason":"kicked"},"expires_at":"2030-01-02T03:04:05Z"}`,
			&Actions{
				Frames:      []Message{{Data: []byte("hi")}, {Binary: true, Data: []byte{0, 1, 2}}},
				Subscribe:   []string{"room:1"},
				Unsubscribe: []string{"room:0"},
				User:        "42",
				Meta:        map[string]string{"tenant": "a"},
				Close:       &CloseAction{Code: 4001, Reason: "kicked"},
				ExpiresAt:   time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC),
			}},
		{"unknown fields ignored", `{"future":{"x":[1,2]},"user":"u"}`, &Actions{User: "u"}},
		{"nulls", `{"frames":null,"user":null,"close":null,"expires_at":null,"meta":null}`, &Actions{}},
		{"empty channel names dropped", `{"subscribe":["","a",""]}`, &Actions{Subscribe: []string{"a"}}},
		{"base64 variants", `{"frames":[{"binary":"AAE"},{"binary":"-_8="},{"binary":""}]}`,
			&Actions{Frames: []Message{{Binary: true, Data: []byte{0, 1}}, {Binary: true, Data: []byte{0xfb, 0xff}}, {Binary: true, Data: []byte{}}}}},
		{"meta scalars", `{"meta":{"n":1.5,"b":true,"s":"x","z":null}}`,
			&Actions{Meta: map[string]string{"n": "1.5", "b": "true", "s": "x"}}},
		{"close without code is normal", `{"close":{}}`, &Actions{Close: &CloseAction{Code: 1000}}},
		{"close 3000", `{"close":{"code":3000}}`, &Actions{Close: &CloseAction{Code: 3000}}},
		{"close 4999", `{"close":{"code":4999,"reason":"x"}}`, &Actions{Close: &CloseAction{Code: 4999, Reason: "x"}}},
		{"long reason cut at rune boundary", `{"close":{"code":4000,"reason":"` + long + `"}}`,
			&Actions{Close: &CloseAction{Code: 4000, Reason: strings.Repeat("é", 61)}}},
		{"expires unix seconds", `{"expires_at":1893456000}`, &Actions{ExpiresAt: time.Unix(1893456000, 0).UTC()}},
		{"expires fractional seconds", `{"expires_at":1893456000.5}`, &Actions{ExpiresAt: time.Unix(1893456000, 5e8).UTC()}},
		{"expires seconds as string", `{"expires_at":"1893456000"}`, &Actions{ExpiresAt: time.Unix(1893456000, 0).UTC()}},
		{"expires with offset", `{"expires_at":"2030-01-02T05:04:05+02:00"}`,
			&Actions{ExpiresAt: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}},
		{"expires empty string", `{"expires_at":""}`, &Actions{}},
		{"text keeps unicode", `{"frames":[{"text":"\u00e9\ud83d\ude00"}]}`, &Actions{Frames: []Message{{Data: []byte("é😀")}}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseActions([]byte(tc.doc))
			if err != nil {
				t.Fatalf("ParseActions: %v", err)
			}
			if got != nil && tc.want != nil && !got.ExpiresAt.Equal(tc.want.ExpiresAt) {
				t.Errorf("ExpiresAt = %v, want %v", got.ExpiresAt, tc.want.ExpiresAt)
			}
			if got != nil && tc.want != nil {
				g, w := *got, *tc.want
				g.ExpiresAt, w.ExpiresAt = time.Time{}, time.Time{}
				got, tc.want = &g, &w
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("ParseActions = %+v\nwant           %+v", got, tc.want)
			}
		})
	}
}

func TestParseActionsRejects(t *testing.T) {
	cases := []struct{ name, doc string }{
		{"not JSON", `hello`},
		{"truncated", `{"frames":[`},
		{"array", `[]`},
		{"null document", `null`},
		{"string document", `"x"`},
		{"trailing garbage", `{} {}`},
		{"frames not a list", `{"frames":{"text":"x"}}`},
		{"frame both", `{"frames":[{"text":"a","binary":"AA=="}]}`},
		{"frame neither", `{"frames":[{}]}`},
		{"frame text number", `{"frames":[{"text":1}]}`},
		{"bad base64", `{"frames":[{"binary":"!!!"}]}`},
		{"subscribe string", `{"subscribe":"room"}`},
		{"subscribe numbers", `{"subscribe":[1]}`},
		{"user number", `{"user":42}`},
		{"meta object value", `{"meta":{"a":{"b":1}}}`},
		{"meta array value", `{"meta":{"a":[]}}`},
		{"meta not object", `{"meta":"x"}`},
		{"close code 0", `{"close":{"code":0}}`},
		{"close code 1001", `{"close":{"code":1001}}`},
		{"close code 1006", `{"close":{"code":1006}}`},
		{"close code 1011", `{"close":{"code":1011}}`},
		{"close code 2999", `{"close":{"code":2999}}`},
		{"close code 5000", `{"close":{"code":5000}}`},
		{"close code negative", `{"close":{"code":-4001}}`},
		{"close code float", `{"close":{"code":4001.5}}`},
		{"close code huge", `{"close":{"code":1e30}}`},
		{"close not object", `{"close":true}`},
		{"expires garbage", `{"expires_at":"tomorrow"}`},
		{"expires bool", `{"expires_at":true}`},
		{"expires zero", `{"expires_at":0}`},
		{"expires negative", `{"expires_at":-5}`},
		{"expires far future", `{"expires_at":1e300}`},
		{"expires object", `{"expires_at":{}}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a, err := ParseActions([]byte(tc.doc))
			if !errors.Is(err, ErrBadActions) {
				t.Fatalf("ParseActions(%s) = %+v, %v; want ErrBadActions", tc.doc, a, err)
			}
		})
	}
}

func TestParseControlHeaders(t *testing.T) {
	cases := []struct {
		name       string
		sub, unsub []string
		close      string
		want       *Actions
		wantErr    bool
	}{
		{name: "nothing"},
		{name: "blank lists", sub: []string{" , ,"}, unsub: []string{""}},
		{name: "lists", sub: []string{"room:1, room:2", "room:3"}, unsub: []string{" a ,b"},
			want: &Actions{Subscribe: []string{"room:1", "room:2", "room:3"}, Unsubscribe: []string{"a", "b"}}},
		{name: "close code only", close: "1000", want: &Actions{Close: &CloseAction{Code: 1000}}},
		{name: "close with reason", close: " 4001  kicked by admin ",
			want: &Actions{Close: &CloseAction{Code: 4001, Reason: "kicked by admin"}}},
		{name: "close reason made valid", close: "4001 a\xffb", want: &Actions{Close: &CloseAction{Code: 4001, Reason: "ab"}}},
		{name: "close long reason", close: "4001 " + strings.Repeat("x", 200),
			want: &Actions{Close: &CloseAction{Code: 4001, Reason: strings.Repeat("x", 123)}}},
		{name: "close not a number", close: "kicked", wantErr: true},
		{name: "close reserved code", close: "1011 oops", wantErr: true},
		{name: "close out of range", close: "99999", wantErr: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseControlHeaders(tc.sub, tc.unsub, tc.close)
			if tc.wantErr {
				if !errors.Is(err, ErrBadActions) {
					t.Fatalf("err = %v, want ErrBadActions", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("ParseControlHeaders = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestTruncateReason(t *testing.T) {
	for _, s := range []string{"", "short", strings.Repeat("a", 123), strings.Repeat("a", 124),
		strings.Repeat("😀", 40), "a" + strings.Repeat("€", 50), "\xff\xfe" + strings.Repeat("b", 130)} {
		got := truncateReason(s)
		if len(got) > 123 || !utf8.ValidString(got) {
			t.Errorf("truncateReason(%d bytes) = %d bytes, valid=%v", len(s), len(got), utf8.ValidString(got))
		}
		if utf8.ValidString(s) && !strings.HasPrefix(s, got) {
			t.Errorf("truncateReason changed more than the tail of %q", s)
		}
		if utf8.ValidString(s) && len(s) <= 123 && got != s {
			t.Errorf("truncateReason(%q) = %q, want it unchanged", s, got)
		}
	}
}

// FuzzParseActions feeds arbitrary documents and X-WS-Close values: neither
// parser may panic, and whatever they accept must be safe to act on.
func FuzzParseActions(f *testing.F) {
	f.Add([]byte(`{"frames":[{"text":"hi"},{"binary":"AAE="}],"subscribe":["a"],"close":{"code":4001,"reason":"x"},"expires_at":1893456000}`), "4001 kicked")
	f.Add([]byte(`{"meta":{"a":1,"b":"x"},"user":"u","expires_at":"2030-01-02T03:04:05Z"}`), "1000")
	f.Add([]byte(`{"close":{"reason":"`+strings.Repeat("é", 80)+`"}}`), "")
	f.Fuzz(func(t *testing.T, body []byte, closeHeader string) {
		a, err := ParseActions(body)
		if err == nil {
			checkActions(t, a)
		} else if !errors.Is(err, ErrBadActions) {
			t.Fatalf("error does not wrap ErrBadActions: %v", err)
		}
		h, err := ParseControlHeaders([]string{string(body)}, []string{closeHeader}, closeHeader)
		if err == nil {
			checkActions(t, h)
			if h != nil && h.Empty() {
				t.Fatal("empty header actions not nil")
			}
		} else if !errors.Is(err, ErrBadActions) {
			t.Fatalf("error does not wrap ErrBadActions: %v", err)
		}
	})
}

func checkActions(t *testing.T, a *Actions) {
	t.Helper()
	if a == nil {
		return
	}
	if c := a.Close; c != nil {
		if c.Code != 1000 && (c.Code < 3000 || c.Code > 4999) {
			t.Fatalf("accepted close code %d", c.Code)
		}
		if len(c.Reason) > 123 || !utf8.ValidString(c.Reason) {
			t.Fatalf("accepted close reason of %d bytes, valid UTF-8 %v", len(c.Reason), utf8.ValidString(c.Reason))
		}
	}
	for _, f := range a.Frames {
		if !f.Binary && !utf8.Valid(f.Data) {
			t.Fatalf("text frame with invalid UTF-8: %q", f.Data)
		}
	}
	for _, ch := range append(append([]string(nil), a.Subscribe...), a.Unsubscribe...) {
		if ch == "" {
			t.Fatal("empty channel name accepted")
		}
	}
	if !a.ExpiresAt.IsZero() && (a.ExpiresAt.Unix() <= 0 || a.ExpiresAt.Year() >= 10000) {
		t.Fatalf("accepted expires_at %v", a.ExpiresAt)
	}
}
