package config

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// This file parses the string forms sidecar.hcl uses for quantities:
// durations ("30s"), sizes ("64KiB") and rates ("10/s", "1MiB/s"). The
// functions return plain errors whose text completes the sentence
// `handshake_timeout = "x" is not valid: …`; convert.go turns them into
// diagnostics pointing at the attribute.

// errNegative is shared so callers can say "must not be negative" once.
var errNegative = errors.New("must not be negative")

// parseDuration accepts Go duration syntax ("500ms", "30s", "1m30s", "0").
// Negative durations are rejected: no setting in sidecar.hcl means
// anything by them, and a leading "-" is far more often a typo.
func parseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, errors.New(`a duration needs a number and a unit, like "500ms", "30s", "5m" or "1h"`)
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, errors.New(`a duration needs a number and a unit, like "500ms", "30s", "5m" or "1h"`)
	}
	if d < 0 {
		return 0, errNegative
	}
	return d, nil
}

// sizeUnits maps unit names (lower-case) to their multiplier. Both SI
// (1KB = 1000 B) and IEC (1KiB = 1024 B) units are accepted because
// operators use both; the "i" is what tells them apart.
var sizeUnits = map[string]int64{
	"b":   1,
	"kb":  1000,
	"mb":  1000 * 1000,
	"gb":  1000 * 1000 * 1000,
	"kib": 1 << 10,
	"mib": 1 << 20,
	"gib": 1 << 30,
}

const sizeHelp = `a size is a whole number with an optional unit: "512B", "64KiB", "1MiB", "1MB" (units B, KB, MB, GB, KiB, MiB, GiB; a bare number is bytes)`

// parseSize parses "64KiB", "1MB", "512B", "64 KiB" or a bare byte count.
func parseSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	if i == 0 {
		if strings.HasPrefix(s, "-") {
			return 0, errNegative
		}
		return 0, errors.New(sizeHelp)
	}
	n, err := strconv.ParseInt(s[:i], 10, 64)
	if err != nil {
		return 0, errors.New("the number is too large")
	}
	unit := strings.ToLower(strings.TrimSpace(s[i:]))
	if unit == "" {
		return n, nil
	}
	mult, ok := sizeUnits[unit]
	if !ok {
		return 0, errors.New(sizeHelp)
	}
	if n > math.MaxInt64/mult {
		return 0, errors.New("the size is too large")
	}
	return n * mult, nil
}

// ratePeriods maps the part after "/" to its period.
var ratePeriods = map[string]time.Duration{
	"s": time.Second,
	"m": time.Minute,
	"h": time.Hour,
}

// parseRate parses "10/s", "600/m", "0.5/s" (events) or, when bytes is
// set, "1MiB/s" (a size per period). "unlimited" yields the zero Rate. The
// burst is configured by a separate attribute and left zero here.
func parseRate(s string, bytes bool) (Rate, error) {
	s = strings.TrimSpace(s)
	help := `a rate is a count per s, m or h, like "10/s" or "600/m", or "unlimited"`
	if bytes {
		help = `a byte rate is a size per s, m or h, like "1MiB/s" or "64KiB/s", or "unlimited"`
	}
	if s == "unlimited" {
		return Rate{}, nil
	}
	slash := strings.LastIndexByte(s, '/')
	if slash < 0 {
		return Rate{}, errors.New(help)
	}
	per, ok := ratePeriods[strings.TrimSpace(s[slash+1:])]
	if !ok {
		return Rate{}, errors.New(help)
	}
	count := strings.TrimSpace(s[:slash])
	var n float64
	if bytes {
		b, err := parseSize(count)
		if err != nil {
			if errors.Is(err, errNegative) {
				return Rate{}, errNegative
			}
			return Rate{}, errors.New(help)
		}
		n = float64(b)
	} else {
		f, err := strconv.ParseFloat(count, 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			return Rate{}, errors.New(help)
		}
		if f < 0 {
			return Rate{}, errNegative
		}
		n = f
	}
	if n <= 0 {
		return Rate{}, fmt.Errorf(`the count must be above zero; write "unlimited" to turn the limit off`)
	}
	return Rate{N: n, Per: per}, nil
}

// formatSize renders a byte count the way the reference documents
// defaults: the largest IEC unit that divides it exactly.
func formatSize(n int64) string {
	switch {
	case n != 0 && n%(1<<30) == 0:
		return strconv.FormatInt(n>>30, 10) + "GiB"
	case n != 0 && n%(1<<20) == 0:
		return strconv.FormatInt(n>>20, 10) + "MiB"
	case n != 0 && n%(1<<10) == 0:
		return strconv.FormatInt(n>>10, 10) + "KiB"
	}
	return strconv.FormatInt(n, 10) + "B"
}
