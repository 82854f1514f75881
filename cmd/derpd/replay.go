package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/pprof"

	"github.com/derpd/derpd/actors/journal"
	"github.com/derpd/derpd/actors/replay"
)

// subcommand runs derpd's subcommands, named by the first argument. Any
// other first argument (a flag, as derper takes them) is left to the
// server's flag parsing: ok is false.
func subcommand(args []string, stdout, stderr io.Writer) (code int, ok bool) {
	if len(args) == 0 {
		return 0, false
	}
	switch args[0] {
	case "replay":
		return runReplay(args[1:], stdout, stderr), true
	case "synth":
		return runSynth(args[1:], stdout, stderr), true
	}
	return 0, false
}

// runReplay is derpd replay: a journal fed to fresh actors with simulated
// connections (package actors/replay), and the report.
func runReplay(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("derpd replay", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var opts replay.Options
	fs.Float64Var(&opts.Speed, "speed", 1, "replay at the recorded pace times this")
	fs.BoolVar(&opts.Max, "max", false, "replay as fast as the actors take it (ignores -speed)")
	fs.IntVar(&opts.Scale, "scale", 1, "clone every recorded client this many times, each with a key of its own")
	fs.StringVar(&opts.Dispatcher, "dispatcher", "", `with -max: "step" (default; counts identical on every run) or "default" (protoactor's, as live)`)
	asJSON := fs.Bool("json", false, "print the report as one JSON object")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the replay to this file")
	memProfile := fs.String("memprofile", "", "write a heap profile at the end of the replay to this file")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: derpd replay [-speed N | -max] [-scale K] [-json] FILE")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return 2
	}
	switch {
	case opts.Speed <= 0:
		fmt.Fprintf(stderr, "derpd replay: -speed %g: want more than 0\n", opts.Speed)
		return 2
	case opts.Scale < 1:
		fmt.Fprintf(stderr, "derpd replay: -scale %d: want 1 or more\n", opts.Scale)
		return 2
	case opts.Dispatcher != "" && opts.Dispatcher != replay.DispatchStep && opts.Dispatcher != replay.DispatchDefault:
		fmt.Fprintf(stderr, "derpd replay: -dispatcher %q: want %q or %q\n", opts.Dispatcher, replay.DispatchStep, replay.DispatchDefault)
		return 2
	case opts.Dispatcher != "" && !opts.Max:
		fmt.Fprintln(stderr, "derpd replay: -dispatcher needs -max (a paced replay runs on protoactor's dispatcher)")
		return 2
	}
	name := fs.Arg(0)
	f, err := os.Open(name)
	if err != nil {
		fmt.Fprintln(stderr, "derpd replay:", err)
		return 1
	}
	defer f.Close()
	jr, err := journal.Open(bufio.NewReaderSize(f, 1<<20))
	if err != nil {
		fmt.Fprintf(stderr, "derpd replay: %s: %v\n", name, err)
		return 1
	}
	if *cpuProfile != "" {
		pf, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintln(stderr, "derpd replay:", err)
			return 1
		}
		defer pf.Close()
		if err := pprof.StartCPUProfile(pf); err != nil {
			fmt.Fprintln(stderr, "derpd replay:", err)
			return 1
		}
		defer pprof.StopCPUProfile()
	}
	if *memProfile != "" {
		opts.AtEnd = func() {
			if err := writeHeapProfile(*memProfile); err != nil {
				fmt.Fprintln(stderr, "derpd replay:", err)
			}
		}
	}
	rep, err := replay.Run(jr, opts)
	if rep != nil {
		if *asJSON {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			if jerr := enc.Encode(rep); jerr != nil {
				fmt.Fprintln(stderr, "derpd replay:", jerr)
				return 1
			}
		} else {
			fmt.Fprint(stdout, rep)
		}
	}
	if err != nil {
		// The report above covers the records before the fault.
		fmt.Fprintf(stderr, "derpd replay: %s: %v\n", name, err)
		return 1
	}
	return 0
}

// writeHeapProfile writes the heap as it is while the replay's actors are
// all still there.
func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.WriteHeapProfile(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
