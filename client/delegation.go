package client

import (
	"context"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	grpccreds "google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/modelnodes/modelnodes/client/discovery"
	"github.com/modelnodes/modelnodes/delegation"
	"github.com/modelnodes/modelnodes/names"
)

// DelegationCheck returns what a model's runner must prove with CrunchDAO's
// wallet delegation: the wallet (base58) and hotkey announced for the model
// (on chain or by the orchestrator) and its model id. ok = false skips the
// check for that model.
type DelegationCheck func(m discovery.Model) (wallet, modelID, hotkey string, ok bool)

// delegationInterceptor checks the delegation a runner sends with every
// model call against the key of the connection it came on: a runner holding a
// valid certificate from the CA, but not the cruncher's signature over its
// key, is refused (Unauthenticated) and its answer discarded.
func delegationInterceptor(md discovery.Model, check DelegationCheck) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if !strings.HasPrefix(method, "/dynamic_subclass.") && !strings.HasPrefix(method, "/train_infer.") {
			return invoker(ctx, method, req, reply, cc, opts...)
		}
		var hdr metadata.MD
		var p peer.Peer
		if err := invoker(ctx, method, req, reply, cc, append(opts, grpc.Header(&hdr), grpc.Peer(&p))...); err != nil {
			return err
		}
		wallet, modelID, hotkey, ok := check(md)
		if !ok {
			return nil
		}
		info, isTLS := p.AuthInfo.(grpccreds.TLSInfo)
		if !isTLS || len(info.State.PeerCertificates) == 0 {
			return status.Error(codes.Unauthenticated, "delegation: the connection has no runner certificate to check it against")
		}
		proof, err := delegation.FromHeaders(hdr)
		if err == nil {
			_, err = proof.Verify(delegation.Expect{Wallet: wallet, ModelID: modelID, Hotkey: hotkey,
				ConnSPKI: info.State.PeerCertificates[0].RawSubjectPublicKeyInfo})
		}
		if err != nil {
			return status.Errorf(codes.Unauthenticated, "the runner's wallet delegation is refused: %v", err)
		}
		return nil
	}
}

// DelegationFromMeta checks every model against what its discovery metadata
// announces: the cruncher's wallet (names.MetaCruncher), the model id
// (names.MetaModel) and the hotkey (names.MetaHotkey), which the
// scheduler's jobs put on their Consul service from the chain or the feed.
// A model announcing no wallet fails the check: with this on, every answer
// must come from a runner the cruncher vouched for.
func DelegationFromMeta(m discovery.Model) (wallet, modelID, hotkey string, ok bool) {
	return m.Meta[names.MetaCruncher], m.Meta[names.MetaModel], m.Meta[names.MetaHotkey], true
}
