package main

import "testing"

func TestPrintableDropsEscapeSequencesAndControlCharacters(t *testing.T) {
	cases := map[string]string{
		"plain text, tabs\tand\nnewlines":   "plain text, tabs\tand\nnewlines",
		"red \x1b[31mtext\x1b[0m":           "red text",
		"title \x1b]0;owned\x07set":         "title set",
		"osc to the end \x1b]8;;http://x":   "osc to the end ",
		"over\rwrite":                       "overwrite",
		"bell\x07 del\x7f c1\u009b[2J csi":  "bell del c1[2J csi",
		"lone escape at the end\x1b":        "lone escape at the end",
		"two-character \x1bcsequence":       "two-character sequence",
		"unicode stays: Grüße, 東京, emoji 🙂": "unicode stays: Grüße, 東京, emoji 🙂",
	}
	for text, want := range cases {
		if got := printable(text); got != want {
			t.Errorf("printable(%q) = %q, want %q", text, got, want)
		}
	}
}
