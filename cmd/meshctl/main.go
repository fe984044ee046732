// Command meshctl is goambient's command line: authorization checks and lint today.
package main

import (
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

// commands maps a subcommand to its entry point; each file registers its own.
var commands = map[string]func(args []string, stdout, stderr io.Writer) int{}

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || commands[args[0]] == nil {
		var names []string
		for n := range commands {
			names = append(names, n)
		}
		slices.Sort(names)
		fmt.Fprintf(stderr, "usage: meshctl <%s> ...\n", strings.Join(names, "|"))
		return 2
	}
	return commands[args[0]](args[1:], stdout, stderr)
}
