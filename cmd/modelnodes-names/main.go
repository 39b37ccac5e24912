// Command modelnodes-names prints the names Model Nodes derives from a
// crunch's or a model's on-chain names (package names): the Consul service,
// the certificate names and URI SAN, the Vault AppRole, the Nomad job. The
// deploy scripts (deploy/consul/setup, deploy/vault/setup) call it so that
// their policies name exactly what the scheduler, the runner and the
// coordinator's client use (the fixed parts of Vault's and Consul's templated
// policies come from its contract command); operators call it to find a
// crunch's service or a model's job.
//
//	modelnodes-names crunch My_Crunch.v2
//	modelnodes-names crunch --field service My_Crunch.v2
//	modelnodes-names model --crunch-id <CRUNCH ID> <MODEL ID>
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/names"
)

const usage = `modelnodes-names: the names Model Nodes derives from on-chain names.

Usage:
  modelnodes-names crunch [--field F] NAME
      the names of a crunch (NAME as on chain, in the feed or YAML: any string the
      scheduler accepts). Prints KEY=VALUE lines, or only F's value with --field:
        label            the crunch's DNS label (itself when NAME is a lowercase
                         DNS label without "--"; otherwise readable part--hash)
        service          the Consul service of its models
        coordinator_cn   the common name of its coordinator's certificate
        coordinator_uri  the URI SAN runners require of its coordinator
        approle          its coordinator's Vault AppRole
  modelnodes-names model [--crunch C | --crunch-id ID] [--name N] [--field F] MODEL_ID
      the names of a model: short_id, job, runner_cn (the runner's certificate).
      Its crunch is the on-chain id (--crunch-id) or, without one, the name (--crunch);
      --name is the short id the authorization chose, if any.
  modelnodes-names contract [--field F]
      the fixed parts of every name, for policies that Vault or Consul fill in
      themselves: job_prefix, runner_domain, service_prefix, coordinator_domain,
      coordinator_uri_prefix, approle_prefix.

Values are DNS-safe: they may be used in shell scripts as they are.
`

// usageError is a mistake on the command line: exit 2 with the usage.
type usageError struct{ error }

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	err := dispatch(args, stdout)
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprint(stdout, usage)
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "modelnodes-names: %v\n\n%s", err, usage)
		return 2
	default:
		fmt.Fprintf(stderr, "modelnodes-names: %v\n", err)
		return 1
	}
}

type field struct{ key, value string }

func dispatch(args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usageError{errors.New("no command")}
	}
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	only := fs.String("field", "", "print only this field's value")
	var fields []field
	switch args[0] {
	case "-h", "--help", "-help", "help":
		return flag.ErrHelp
	case "crunch":
		name, err := operand(fs, args[1:], "NAME")
		if err != nil {
			return err
		}
		if err := check("crunch name", name, true); err != nil {
			return err
		}
		fields = []field{
			{"label", names.Crunch(name)},
			{"service", names.Service(name)},
			{"coordinator_cn", names.CoordinatorCommonName(name)},
			{"coordinator_uri", names.CoordinatorURI(name)},
			{"approle", names.CoordinatorAppRole(name)},
		}
	case "model":
		crunch := fs.String("crunch", "", "the crunch's name (when it has no on-chain id)")
		crunchID := fs.String("crunch-id", "", "the crunch's on-chain id")
		short := fs.String("name", "", "the short id the operator's YAML chose")
		hashed := fs.Bool("hashed", false, "as the scheduler with --model-id-names=false: the model id names nothing")
		modelID, err := operand(fs, args[1:], "MODEL_ID")
		if err != nil {
			return err
		}
		m := &jobs.Model{Crunch: *crunch, CrunchID: *crunchID, ModelID: modelID, Name: *short}
		if m.CrunchID == "" && m.Crunch == "" {
			return usageError{errors.New("say which crunch: --crunch-id, or --crunch for a crunch without an on-chain id")}
		}
		for _, s := range []struct{ what, v string }{{"crunch name", m.Crunch}, {"crunch id", m.CrunchID}, {"model id", modelID}, {"name", m.Name}} {
			if err := check(s.what, s.v, s.what == "model id"); err != nil {
				return err
			}
		}
		if m.Name != "" && !names.IsLabel(m.Name, names.MaxModelName) {
			return fmt.Errorf("name %q is not a lowercase DNS label of at most %d characters", m.Name, names.MaxModelName)
		}
		if m.Name != "" && names.IsHashedShortID(m.Name) && m.Name != jobs.Key(m) {
			return fmt.Errorf("name %q has the shape of a hashed short id: it could name another model's job", m.Name)
		}
		// The name the scheduler gives when no model of another crunch
		// claims the same one (jobs.AssignNames).
		jobs.AssignNames([]*jobs.Model{m}, *hashed)
		job := jobs.JobID(m)
		fields = []field{{"short_id", jobs.ShortID(m)}, {"job", job}, {"runner_cn", names.RunnerCommonName(job)}}
	case "contract":
		if err := fs.Parse(args[1:]); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return err
			}
			return usageError{err}
		}
		if fs.NArg() != 0 {
			return usageError{fmt.Errorf("contract takes no operand, got %q", fs.Arg(0))}
		}
		fields = []field{
			{"job_prefix", names.JobPrefix},
			{"runner_domain", names.RunnerDomain},
			{"service_prefix", names.ServicePrefix},
			{"coordinator_domain", names.CoordinatorDomain},
			{"coordinator_uri_prefix", names.CoordinatorURIPrefix},
			{"approle_prefix", names.CoordinatorAppRolePrefix},
		}
	default:
		return usageError{fmt.Errorf("unknown command %q (want crunch, model or contract)", args[0])}
	}
	if *only != "" {
		i := slices.IndexFunc(fields, func(f field) bool { return f.key == *only })
		if i < 0 {
			keys := make([]string, len(fields))
			for j, f := range fields {
				keys[j] = f.key
			}
			return usageError{fmt.Errorf("unknown --field %q (want one of %s)", *only, strings.Join(keys, ", "))}
		}
		fmt.Fprintln(stdout, fields[i].value)
		return nil
	}
	for _, f := range fields {
		fmt.Fprintf(stdout, "%s=%s\n", f.key, f.value)
	}
	return nil
}

// operand parses fs's flags and returns its one operand (flags may follow it).
func operand(fs *flag.FlagSet, args []string, what string) (string, error) {
	var rest []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return "", err
			}
			return "", usageError{err}
		}
		if fs.NArg() == 0 {
			break
		}
		rest = append(rest, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(rest) != 1 {
		return "", usageError{fmt.Errorf("want exactly one %s, got %d", what, len(rest))}
	}
	return rest[0], nil
}

// check refuses what the scheduler refuses in a source's strings, with the
// same message, and the empty string where one is required.
func check(what, s string, required bool) error {
	if s == "" && required {
		return usageError{fmt.Errorf("empty %s", what)}
	}
	if err := jobs.CheckString(s); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}
