package main

import "regexp"

// Answers, document ids and error details come from documents and the server: a
// document can hold escape sequences that move the cursor, rewrite earlier lines
// or set the window title. printable drops every escape sequence whole and every
// other control character (C0, DEL, C1), keeping newlines and tabs, as the Python
// CLI does (rag_cli/terminal.py).
var (
	// ESC and then a CSI sequence; an OSC, DCS, SOS, PM or APC string up to its
	// terminator (BEL or ESC \) or the end; or any one character. A lone ESC too.
	escapeSequence = regexp.MustCompile(`(?s)\x1b(?:\[[0-?]*[ -/]*[@-~]|[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)?|.)?`)
	// C0 but newline and tab, DEL, and C1 (whose CSI, U+009B, starts sequences on some terminals).
	control = regexp.MustCompile(`[\x00-\x08\x0b-\x1f\x7f-\x{9f}]`)
)

func printable(text string) string {
	return control.ReplaceAllString(escapeSequence.ReplaceAllString(text, ""), "")
}
