// usermeta from Java with grpc-java and stubs generated from proto/ (protoc's java_out and the grpc-java plugin),
// as a test: health, all four RPCs and two errors with their rich details decoded, every answer checked. Exits 1
// at the first mismatch.
//
// Reads from the environment (interop/run.sh and interop/java/run.sh set them from `usermeta dev`'s banner):
//   USERMETA_ADDR  host:port of usermeta (plaintext)
//   USER_TOKEN     an access token of a user whose keys under `profile.` are self-writable
//   ADMIN_TOKEN    an access token of a usermeta admin (USERMETA_ADMINS)
//   DEMO_USER_ID   the ZITADEL user id USER_TOKEN belongs to; it has ContractNumber=1234
//
// Written against the grpc-java API that both Debian 12's grpc-java 1.41 (what CI builds it with, see build.sh)
// and current releases have.
package example.usermeta;

import com.google.protobuf.Any;
import com.google.protobuf.ByteString;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.protobuf.Message;
import com.google.rpc.BadRequest;
import com.google.rpc.ErrorInfo;
import io.grpc.Grpc;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.health.v1.HealthCheckRequest;
import io.grpc.health.v1.HealthCheckResponse;
import io.grpc.health.v1.HealthGrpc;
import io.grpc.protobuf.StatusProto;
import io.grpc.stub.MetadataUtils;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.function.Supplier;
import java.util.stream.Collectors;
import usermeta.v1.UserMetadataServiceGrpc;
import usermeta.v1.UserMetadataServiceGrpc.UserMetadataServiceBlockingStub;
import usermeta.v1.Usermeta.DeleteMetadataRequest;
import usermeta.v1.Usermeta.DeleteMetadataResponse;
import usermeta.v1.Usermeta.GetMyMetadataRequest;
import usermeta.v1.Usermeta.GetMyMetadataResponse;
import usermeta.v1.Usermeta.KeyFilter;
import usermeta.v1.Usermeta.KeyMatch;
import usermeta.v1.Usermeta.ListMetadataRequest;
import usermeta.v1.Usermeta.ListMetadataResponse;
import usermeta.v1.Usermeta.MetadataEntry;
import usermeta.v1.Usermeta.MetadataSource;
import usermeta.v1.Usermeta.MetadataValue;
import usermeta.v1.Usermeta.SetMetadataRequest;
import usermeta.v1.Usermeta.SetMetadataResponse;

public final class Client {
  private static final String SERVICE = "usermeta.v1.UserMetadataService";
  private static final String KEY = "profile.interop-java";
  private static final long TIMEOUT_SECONDS = 10; // for every call
  private static final Metadata.Key<String> AUTHORIZATION =
      Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);

  private Client() {}

  private static void check(boolean ok, String what, Object answer) {
    if (ok) {
      System.out.println("   ok   " + what);
      return;
    }
    System.out.println("   FAIL " + what);
    if (answer != null) {
      System.out.println("   the answer was: " + answer);
    }
    System.exit(1);
  }

  /** The stub, with a deadline for one call and, unless token is null, the caller's ZITADEL access token. */
  private static UserMetadataServiceBlockingStub as(UserMetadataServiceBlockingStub stub, String token) {
    stub = stub.withDeadlineAfter(TIMEOUT_SECONDS, TimeUnit.SECONDS);
    if (token == null) {
      return stub;
    }
    Metadata headers = new Metadata();
    headers.put(AUTHORIZATION, "Bearer " + token);
    return stub.withInterceptors(MetadataUtils.newAttachHeadersInterceptor(headers));
  }

  private static MetadataValue text(String text) {
    return MetadataValue.newBuilder().setText(text).build();
  }

  /** The entry's value was decoded to exactly that text. */
  private static boolean isText(usermeta.v1.Usermeta.Metadata entry, String text) {
    return entry.getValue().getKindCase() == MetadataValue.KindCase.TEXT && entry.getValue().getText().equals(text);
  }

  /** The entry's value was decoded to exactly those (non-UTF-8) bytes. */
  private static boolean isBinary(usermeta.v1.Usermeta.Metadata entry, ByteString bytes) {
    return entry.getValue().getKindCase() == MetadataValue.KindCase.BINARY
        && entry.getValue().getBinary().equals(bytes);
  }

  private static List<String> keys(List<usermeta.v1.Usermeta.Metadata> entries) {
    return entries.stream().map(usermeta.v1.Usermeta.Metadata::getKey).collect(Collectors.toList());
  }

  /** The code and description of a failed call, and its cause on one line (Status.toString has its stack trace). */
  private static String describe(StatusRuntimeException error) {
    Status status = error.getStatus();
    String described = status.getCode() + ": " + status.getDescription();
    return status.getCause() == null ? described : described + " (" + status.getCause() + ")";
  }

  /** Makes a call that must fail with code; returns its google.rpc.Status (from grpc-status-details-bin). */
  private static com.google.rpc.Status failsWith(Status.Code code, Supplier<Message> call) {
    Message answer;
    try {
      answer = call.get();
    } catch (StatusRuntimeException error) {
      check(error.getStatus().getCode() == code, "fails with " + code, describe(error));
      com.google.rpc.Status status = StatusProto.fromThrowable(error);
      check(status != null, "the error carries a google.rpc.Status (grpc-status-details-bin)", error.getTrailers());
      return status;
    }
    check(false, "fails with " + code, answer);
    throw new AssertionError("unreachable");
  }

  /** The details of status that are of type, unpacked. */
  private static <T extends Message> List<T> unpacked(com.google.rpc.Status status, Class<T> type) {
    List<T> found = new ArrayList<>();
    for (Any detail : status.getDetailsList()) {
      if (detail.is(type)) {
        try {
          found.add(detail.unpack(type));
        } catch (InvalidProtocolBufferException e) {
          check(false, "a " + type.getSimpleName() + " detail decodes", e);
        }
      }
    }
    return found;
  }

  public static void main(String[] args) throws InterruptedException {
    String addr = System.getenv("USERMETA_ADDR");
    String userToken = System.getenv("USER_TOKEN");
    String adminToken = System.getenv("ADMIN_TOKEN");
    String demoUserId = System.getenv("DEMO_USER_ID");
    for (String value : new String[] {addr, userToken, adminToken, demoUserId}) {
      if (value == null || value.isEmpty()) {
        System.out.println("   FAIL set USERMETA_ADDR, USER_TOKEN, ADMIN_TOKEN and DEMO_USER_ID");
        System.exit(1);
      }
    }
    System.out.printf("== java %s, grpc-java %s against %s%n", System.getProperty("java.version"),
        Grpc.class.getPackage().getImplementationVersion(), addr);

    // Plaintext, as usermeta dev serves; leave usePlaintext() out (TLS) in production.
    ManagedChannel channel = ManagedChannelBuilder.forTarget(addr).usePlaintext().build();
    try {
      HealthGrpc.HealthBlockingStub health = HealthGrpc.newBlockingStub(channel);
      UserMetadataServiceBlockingStub stub = UserMetadataServiceGrpc.newBlockingStub(channel);

      System.out.println("-- grpc.health.v1.Health/Check");
      for (String[] s : new String[][] {{"", "the server"}, {SERVICE, SERVICE}}) {
        HealthCheckResponse answer = health.withDeadlineAfter(TIMEOUT_SECONDS, TimeUnit.SECONDS)
            .check(HealthCheckRequest.newBuilder().setService(s[0]).build());
        check(answer.getStatus() == HealthCheckResponse.ServingStatus.SERVING, s[1] + " is SERVING", answer);
      }

      System.out.println("-- GetMyMetadata (userinfo)");
      GetMyMetadataResponse mine = as(stub, userToken).getMyMetadata(GetMyMetadataRequest.getDefaultInstance());
      check(mine.getUserId().equals(demoUserId), "user_id is the demo user", mine);
      List<usermeta.v1.Usermeta.Metadata> contract = mine.getMetadataList().stream()
          .filter(m -> m.getKey().equals("ContractNumber"))
          .collect(Collectors.toList());
      check(contract.size() == 1 && isText(contract.get(0), "1234"), "ContractNumber is decoded to the text 1234",
          mine);

      System.out.println("-- SetMetadata: a text and a binary value on yourself");
      ByteString nonUtf8 = ByteString.copyFrom(new byte[] {(byte) 0xff, 0x00, 0x01});
      SetMetadataResponse set = as(stub, userToken).setMetadata(SetMetadataRequest.newBuilder()
          .addEntries(MetadataEntry.newBuilder().setKey(KEY).setValue(text("grüße")))
          .addEntries(MetadataEntry.newBuilder().setKey(KEY + ".bin")
              .setValue(MetadataValue.newBuilder().setBinary(nonUtf8)))
          .build());
      check(set.hasUpdateTime(), "the write has an update_time", set);

      System.out.println("-- GetMyMetadata (auth API, with timestamps) sees both");
      GetMyMetadataRequest both = GetMyMetadataRequest.newBuilder()
          .addKeys(KEY)
          .addKeys(KEY + ".bin")
          .setSource(MetadataSource.METADATA_SOURCE_AUTH_API)
          .build();
      mine = as(stub, userToken).getMyMetadata(both);
      check(keys(mine.getMetadataList()).equals(List.of(KEY, KEY + ".bin")), "two entries, ordered by key", mine);
      check(isText(mine.getMetadata(0), "grüße"), "the text value came back as text", mine);
      check(isBinary(mine.getMetadata(1), nonUtf8), "the non-UTF-8 value came back as binary", mine);
      check(mine.getMetadataList().stream().allMatch(m -> m.hasCreateTime() && m.hasUpdateTime()),
          "the auth API gives create and update times", mine);

      System.out.println("-- ListMetadata of the demo user, as the admin, one entry a page");
      ListMetadataRequest listing = ListMetadataRequest.newBuilder()
          .setUserId(demoUserId)
          .setKeyFilter(KeyFilter.newBuilder().setKey(KEY).setMatch(KeyMatch.KEY_MATCH_STARTS_WITH))
          .setPageSize(1)
          .build();
      ListMetadataResponse page = as(stub, adminToken).listMetadata(listing);
      check(keys(page.getMetadataList()).equals(List.of(KEY)), "page 1 holds " + KEY, page);
      check(page.getTotalSize() == 2, "total_size is 2", page);
      check(!page.getNextPageToken().isEmpty(), "there is a next page", page);
      page = as(stub, adminToken).listMetadata(listing.toBuilder().setPageToken(page.getNextPageToken()).build());
      check(keys(page.getMetadataList()).equals(List.of(KEY + ".bin")) && page.getNextPageToken().isEmpty(),
          "page 2 holds " + KEY + ".bin and is the last", page);

      System.out.println("-- DeleteMetadata both, then they are gone");
      DeleteMetadataResponse deleted = as(stub, userToken)
          .deleteMetadata(DeleteMetadataRequest.newBuilder().addKeys(KEY).addKeys(KEY + ".bin").build());
      check(deleted.hasUpdateTime(), "the delete has an update_time", deleted);
      mine = as(stub, userToken).getMyMetadata(both);
      check(mine.getMetadataCount() == 0, "no entries are left", mine);

      System.out.println("-- an empty key: INVALID_ARGUMENT with a google.rpc.BadRequest");
      com.google.rpc.Status status = failsWith(Status.Code.INVALID_ARGUMENT, () -> as(stub, userToken)
          .setMetadata(SetMetadataRequest.newBuilder()
              .addEntries(MetadataEntry.newBuilder().setKey("").setValue(text("x")))
              .build()));
      List<BadRequest> badRequests = unpacked(status, BadRequest.class);
      check(badRequests.size() == 1
              && badRequests.get(0).getFieldViolationsList().stream()
                  .map(BadRequest.FieldViolation::getField)
                  .collect(Collectors.toList())
                  .equals(List.of("entries[0].key")),
          "the details hold a BadRequest naming entries[0].key", status);

      System.out.println("-- no token: UNAUTHENTICATED with a google.rpc.ErrorInfo");
      status = failsWith(Status.Code.UNAUTHENTICATED,
          () -> as(stub, null).getMyMetadata(GetMyMetadataRequest.getDefaultInstance()));
      List<ErrorInfo> infos = unpacked(status, ErrorInfo.class);
      check(infos.size() == 1 && infos.get(0).getReason().equals("TOKEN_MISSING")
              && infos.get(0).getDomain().equals("usermeta"),
          "the details hold ErrorInfo TOKEN_MISSING from domain usermeta", status);
    } catch (StatusRuntimeException error) {
      // A call that should have succeeded failed.
      System.out.println("   FAIL a call failed: " + describe(error));
      System.exit(1);
    } finally {
      channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
    }
    System.out.println("java: ok");
  }
}
