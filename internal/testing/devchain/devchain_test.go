//go:build e2e

package devchain

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	solana "github.com/gagliardetto/solana-go"
	"github.com/gagliardetto/solana-go/rpc"
)

func frontDir(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("starts the Solana front (node); skipped with -short")
	}
	if _, err := exec.LookPath("node"); err != nil {
		t.Skip("node is not installed (Debian: apt-get install nodejs npm; .ci/run does)")
	}
	dir, err := filepath.Abs(Dir("../../.."))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := Install(ctx, dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

// What a caller plants is what solana-go's unmodified RPC client reads, and
// a closed account is gone.
func TestPlantAndRead(t *testing.T) {
	dir := frontDir(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	f, err := Start(ctx, Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Stop(5 * time.Second)
	addr, owner := solana.NewWallet().PublicKey(), solana.NewWallet().PublicKey()
	slot, err := f.SetAccount(ctx, addr, owner, []byte("planted"))
	if err != nil || slot == 0 {
		t.Fatalf("SetAccount: slot %d, %v", slot, err)
	}
	c := rpc.New(f.RPC)
	info, err := c.GetAccountInfo(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	if !info.Value.Owner.Equals(owner) || !bytes.Equal(info.Value.Data.GetBinary(), []byte("planted")) {
		t.Fatalf("read back owner %s data %q", info.Value.Owner, info.Value.Data.GetBinary())
	}
	if _, err := f.CloseAccount(ctx, addr); err != nil {
		t.Fatal(err)
	}
	accts, err := c.GetProgramAccounts(ctx, owner)
	if err != nil || len(accts) != 0 {
		t.Fatalf("after close, the program still owns %d accounts (%v)", len(accts), err)
	}
	if err := f.do(ctx, map[string]any{"op": "nonsense"}, nil); err == nil {
		t.Fatal("an unknown control op was accepted")
	}
}

// A detached front outlives nothing it should: it runs in its own session,
// logs to its file, answers on the port asked for, and ends on SIGTERM.
func TestDetached(t *testing.T) {
	dir := frontDir(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	log := filepath.Join(t.TempDir(), "front.log")
	f, err := Start(ctx, Options{Dir: dir, Detached: true, LogFile: log})
	if err != nil {
		t.Fatal(err)
	}
	pgid, err := syscall.Getpgid(f.Pid())
	if err != nil || pgid != f.Pid() {
		t.Fatalf("detached front is not its own process group (pgid %d, pid %d, %v)", pgid, f.Pid(), err)
	}
	if _, err := Attach(f.RPC).Stats(ctx); err != nil {
		t.Fatalf("attached control: %v", err)
	}
	if err := f.Stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(log); !bytes.Contains(b, []byte("LISTENING")) {
		t.Fatalf("log file lacks the LISTENING line: %q", b)
	}
	if _, err := Attach(f.RPC).Stats(ctx); err == nil {
		t.Fatal("the front still answers after Stop")
	}
}

// With a state file, a front stopped and started again serves the same
// accounts (a closed one stays closed) at a later slot: the demo's chain
// survives a restart of its front.
func TestStateSurvivesRestart(t *testing.T) {
	dir := frontDir(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	state := filepath.Join(t.TempDir(), "accounts.json")
	f, err := Start(ctx, Options{Dir: dir, StateFile: state})
	if err != nil {
		t.Fatal(err)
	}
	kept, closed, owner := solana.NewWallet().PublicKey(), solana.NewWallet().PublicKey(), solana.NewWallet().PublicKey()
	if _, err := f.SetAccount(ctx, kept, owner, []byte("kept")); err != nil {
		t.Fatal(err)
	}
	if _, err := f.SetAccount(ctx, closed, owner, []byte("closed")); err != nil {
		t.Fatal(err)
	}
	last, err := f.CloseAccount(ctx, closed)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(state); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("state file: %v %v, want mode 0600", fi, err)
	}

	f, err = Start(ctx, Options{Dir: dir, StateFile: state})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Stop(5 * time.Second)
	c := rpc.New(f.RPC)
	accts, err := c.GetProgramAccounts(ctx, owner)
	if err != nil {
		t.Fatal(err)
	}
	if len(accts) != 1 || !accts[0].Pubkey.Equals(kept) || !bytes.Equal(accts[0].Account.Data.GetBinary(), []byte("kept")) {
		t.Fatalf("after a restart the program owns %d accounts, want only %s holding \"kept\"", len(accts), kept)
	}
	slot, err := c.GetSlot(ctx, rpc.CommitmentFinalized)
	if err != nil || slot <= last {
		t.Errorf("slot after the restart %d (%v), want past %d: slots never go back", slot, err, last)
	}
}
