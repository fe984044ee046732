package hbone
import ("testing";"os")
func TestMain(m *testing.M){ NoCork = os.Getenv("NOCORK")!=""; os.Exit(m.Run()) }
