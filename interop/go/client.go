// usermeta from Go with grpc-go and stubs generated from proto/ (protoc-gen-go, protoc-gen-go-grpc), as a test:
// health, all four RPCs and two errors with their rich details decoded, every answer checked. Exits 1 at the
// first mismatch.
//
// Reads from the environment (interop/run.sh and interop/go/run.sh set them from `usermeta dev`'s banner):
//
//	USERMETA_ADDR  host:port of usermeta (plaintext)
//	USER_TOKEN     an access token of a user whose keys under `profile.` are self-writable
//	ADMIN_TOKEN    an access token of a usermeta admin (USERMETA_ADMINS)
//	DEMO_USER_ID   the ZITADEL user id USER_TOKEN belongs to; it has ContractNumber=1234
//
// Written against the grpc-go API that both Debian 12's grpc-go 1.33 (what CI builds it with, see build.sh) and
// current releases have.
package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"reflect"
	"runtime"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	usermetav1 "example.com/usermeta-client/gen/usermeta/v1"
)

const (
	service = "usermeta.v1.UserMetadataService"
	key     = "profile.interop-go"
	timeout = 10 * time.Second // for every call
)

func check(ok bool, what string, answer any) {
	if ok {
		fmt.Printf("   ok   %s\n", what)
		return
	}
	fmt.Printf("   FAIL %s\n", what)
	if answer != nil {
		fmt.Printf("   the answer was: %v\n", answer)
	}
	os.Exit(1)
}

// must stops the test when a call that should succeed failed.
func must(err error, what string) {
	if err != nil {
		st := status.Convert(err)
		fmt.Printf("   FAIL %s: %s: %s\n", what, st.Code(), st.Message())
		os.Exit(1)
	}
}

// as makes the context of one call: a deadline and, unless token is empty, the caller's ZITADEL access token.
func as(token string) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	return ctx, cancel
}

func text(s string) *usermetav1.MetadataValue {
	return &usermetav1.MetadataValue{Kind: &usermetav1.MetadataValue_Text{Text: s}}
}

func binary(b []byte) *usermetav1.MetadataValue {
	return &usermetav1.MetadataValue{Kind: &usermetav1.MetadataValue_Binary{Binary: b}}
}

// isText and isBinary: the entry's value was decoded to exactly that text, or to exactly those non-UTF-8 bytes.
func isText(m *usermetav1.Metadata, want string) bool {
	v, ok := m.GetValue().GetKind().(*usermetav1.MetadataValue_Text)
	return ok && v.Text == want
}

func isBinary(m *usermetav1.Metadata, want []byte) bool {
	v, ok := m.GetValue().GetKind().(*usermetav1.MetadataValue_Binary)
	return ok && bytes.Equal(v.Binary, want)
}

func keys(entries []*usermetav1.Metadata) []string {
	found := []string{}
	for _, m := range entries {
		found = append(found, m.GetKey())
	}
	return found
}

// failsWith checks that a call failed with code and carried details (the grpc-status-details-bin trailer, which
// grpc-go decodes into the status); it returns the status.
func failsWith(code codes.Code, err error, answer any) *status.Status {
	if err == nil {
		check(false, "fails with "+code.String(), answer)
	}
	st := status.Convert(err)
	check(st.Code() == code, "fails with "+code.String(), fmt.Sprintf("%s: %s", st.Code(), st.Message()))
	check(len(st.Proto().GetDetails()) > 0, "the error carries a google.rpc.Status (grpc-status-details-bin)", st.Proto())
	return st
}

func main() {
	addr, userToken, adminToken, demoUserID :=
		os.Getenv("USERMETA_ADDR"), os.Getenv("USER_TOKEN"), os.Getenv("ADMIN_TOKEN"), os.Getenv("DEMO_USER_ID")
	if addr == "" || userToken == "" || adminToken == "" || demoUserID == "" {
		fmt.Println("   FAIL set USERMETA_ADDR, USER_TOKEN, ADMIN_TOKEN and DEMO_USER_ID")
		os.Exit(1)
	}
	fmt.Printf("== go %s, grpc-go %s against %s\n", runtime.Version(), grpc.Version, addr)

	// Plaintext, as usermeta dev serves; use grpc.WithTransportCredentials(credentials.NewTLS(...)) in
	// production. (grpc-go 1.34+ also has grpc.WithTransportCredentials(insecure.NewCredentials()) for this.)
	conn, err := grpc.Dial(addr, grpc.WithInsecure()) //nolint:staticcheck // the form Debian's grpc-go 1.33 has
	must(err, "connect")
	defer conn.Close()
	health := healthpb.NewHealthClient(conn)
	client := usermetav1.NewUserMetadataServiceClient(conn)

	fmt.Println("-- grpc.health.v1.Health/Check")
	for _, s := range []struct{ service, name string }{{"", "the server"}, {service, service}} {
		ctx, cancel := as("")
		answer, err := health.Check(ctx, &healthpb.HealthCheckRequest{Service: s.service})
		cancel()
		must(err, "Health/Check "+s.name)
		check(answer.GetStatus() == healthpb.HealthCheckResponse_SERVING, s.name+" is SERVING", answer)
	}

	fmt.Println("-- GetMyMetadata (userinfo)")
	ctx, cancel := as(userToken)
	mine, err := client.GetMyMetadata(ctx, &usermetav1.GetMyMetadataRequest{})
	cancel()
	must(err, "GetMyMetadata")
	check(mine.GetUserId() == demoUserID, "user_id is the demo user", mine)
	var contract []*usermetav1.Metadata
	for _, m := range mine.GetMetadata() {
		if m.GetKey() == "ContractNumber" {
			contract = append(contract, m)
		}
	}
	check(len(contract) == 1 && isText(contract[0], "1234"), "ContractNumber is decoded to the text 1234", mine)

	fmt.Println("-- SetMetadata: a text and a binary value on yourself")
	nonUTF8 := []byte{0xff, 0x00, 0x01}
	ctx, cancel = as(userToken)
	set, err := client.SetMetadata(ctx, &usermetav1.SetMetadataRequest{Entries: []*usermetav1.MetadataEntry{
		{Key: key, Value: text("grüße")},
		{Key: key + ".bin", Value: binary(nonUTF8)},
	}})
	cancel()
	must(err, "SetMetadata")
	check(set.GetUpdateTime() != nil, "the write has an update_time", set)

	fmt.Println("-- GetMyMetadata (auth API, with timestamps) sees both")
	both := &usermetav1.GetMyMetadataRequest{
		Keys:   []string{key, key + ".bin"},
		Source: usermetav1.MetadataSource_METADATA_SOURCE_AUTH_API,
	}
	ctx, cancel = as(userToken)
	mine, err = client.GetMyMetadata(ctx, both)
	cancel()
	must(err, "GetMyMetadata")
	got := mine.GetMetadata()
	check(reflect.DeepEqual(keys(got), []string{key, key + ".bin"}), "two entries, ordered by key", mine)
	check(isText(got[0], "grüße"), "the text value came back as text", mine)
	check(isBinary(got[1], nonUTF8), "the non-UTF-8 value came back as binary", mine)
	timed := true
	for _, m := range got {
		timed = timed && m.GetCreateTime() != nil && m.GetUpdateTime() != nil
	}
	check(timed, "the auth API gives create and update times", mine)

	fmt.Println("-- ListMetadata of the demo user, as the admin, one entry a page")
	listing := &usermetav1.ListMetadataRequest{
		UserId:    demoUserID,
		KeyFilter: &usermetav1.KeyFilter{Key: key, Match: usermetav1.KeyMatch_KEY_MATCH_STARTS_WITH},
		PageSize:  1,
	}
	ctx, cancel = as(adminToken)
	page, err := client.ListMetadata(ctx, listing)
	cancel()
	must(err, "ListMetadata page 1")
	check(reflect.DeepEqual(keys(page.GetMetadata()), []string{key}), "page 1 holds "+key, page)
	check(page.GetTotalSize() == 2, "total_size is 2", page)
	check(page.GetNextPageToken() != "", "there is a next page", page)
	listing.PageToken = page.GetNextPageToken()
	ctx, cancel = as(adminToken)
	page, err = client.ListMetadata(ctx, listing)
	cancel()
	must(err, "ListMetadata page 2")
	check(reflect.DeepEqual(keys(page.GetMetadata()), []string{key + ".bin"}) && page.GetNextPageToken() == "",
		"page 2 holds "+key+".bin and is the last", page)

	fmt.Println("-- DeleteMetadata both, then they are gone")
	ctx, cancel = as(userToken)
	deleted, err := client.DeleteMetadata(ctx, &usermetav1.DeleteMetadataRequest{Keys: []string{key, key + ".bin"}})
	cancel()
	must(err, "DeleteMetadata")
	check(deleted.GetUpdateTime() != nil, "the delete has an update_time", deleted)
	ctx, cancel = as(userToken)
	mine, err = client.GetMyMetadata(ctx, both)
	cancel()
	must(err, "GetMyMetadata")
	check(len(mine.GetMetadata()) == 0, "no entries are left", mine)

	fmt.Println("-- an empty key: INVALID_ARGUMENT with a google.rpc.BadRequest")
	ctx, cancel = as(userToken)
	set, err = client.SetMetadata(ctx, &usermetav1.SetMetadataRequest{Entries: []*usermetav1.MetadataEntry{
		{Key: "", Value: text("x")},
	}})
	cancel()
	st := failsWith(codes.InvalidArgument, err, set)
	var badRequests []*errdetails.BadRequest
	for _, detail := range st.Details() { // the google.protobuf.Any details, unpacked; an error for an unknown type
		if d, ok := detail.(*errdetails.BadRequest); ok {
			badRequests = append(badRequests, d)
		}
	}
	var fields []string
	if len(badRequests) == 1 {
		for _, v := range badRequests[0].GetFieldViolations() {
			fields = append(fields, v.GetField())
		}
	}
	check(reflect.DeepEqual(fields, []string{"entries[0].key"}), "the details hold a BadRequest naming entries[0].key",
		st.Proto())

	fmt.Println("-- no token: UNAUTHENTICATED with a google.rpc.ErrorInfo")
	ctx, cancel = as("")
	mine, err = client.GetMyMetadata(ctx, &usermetav1.GetMyMetadataRequest{})
	cancel()
	st = failsWith(codes.Unauthenticated, err, mine)
	var infos []*errdetails.ErrorInfo
	for _, detail := range st.Details() {
		if d, ok := detail.(*errdetails.ErrorInfo); ok {
			infos = append(infos, d)
		}
	}
	check(len(infos) == 1 && infos[0].GetReason() == "TOKEN_MISSING" && infos[0].GetDomain() == "usermeta",
		"the details hold ErrorInfo TOKEN_MISSING from domain usermeta", st.Proto())

	fmt.Println("go: ok")
}
