package commonspb

import (
	"strings"
	"unicode"

	"google.golang.org/grpc/codes"
)

// CodeName spells a gRPC code the way CrunchDAO's Status.code strings are
// spelled (DeadlineExceeded → DEADLINE_EXCEEDED), so runner metrics and
// client results put transport and model outcomes in one vocabulary.
func CodeName(c codes.Code) string {
	var b strings.Builder
	prev := rune(0)
	for _, r := range c.String() {
		// A word starts at an upper-case letter after a lower-case one
		// ("OK" stays one word).
		if unicode.IsUpper(r) && unicode.IsLower(prev) {
			b.WriteByte('_')
		}
		b.WriteRune(unicode.ToUpper(r))
		prev = r
	}
	return b.String()
}
