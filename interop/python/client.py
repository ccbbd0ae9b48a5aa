"""usermeta from Python with grpcio and stubs generated from proto/ (generate.sh), as a test: health, all four RPCs
and two errors with their rich details decoded, every answer checked. Exits 1 at the first mismatch.

Reads from the environment (interop/run.sh and interop/python/run.sh set them from `usermeta dev`'s banner):
  USERMETA_ADDR   host:port of usermeta (plaintext)
  USER_TOKEN      an access token of a user whose keys under `profile.` are self-writable
  ADMIN_TOKEN     an access token of a usermeta admin (USERMETA_ADMINS)
  DEMO_USER_ID    the ZITADEL user id USER_TOKEN belongs to; it has ContractNumber=1234
"""

import os
import sys
from pathlib import Path

# The generated stubs (generate.sh writes them to gen/); they import each other as `usermeta.v1.…`.
sys.path.insert(0, str(Path(__file__).resolve().parent / "gen"))

import grpc  # noqa: E402
from google.rpc import error_details_pb2  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from grpc_status import rpc_status  # noqa: E402

from usermeta.v1 import usermeta_pb2 as pb  # noqa: E402
from usermeta.v1 import usermeta_pb2_grpc as pb_grpc  # noqa: E402

SERVICE = "usermeta.v1.UserMetadataService"
KEY = "profile.interop-python"
TIMEOUT = 10  # seconds, for every call


def check(ok: bool, what: str, answer: object = None) -> None:
    if ok:
        print(f"   ok   {what}")
        return
    print(f"   FAIL {what}")
    if answer is not None:
        print(f"   the answer was: {answer}")
    sys.exit(1)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """gRPC metadata carrying the caller's ZITADEL access token."""
    return (("authorization", f"Bearer {token}"),)


def value_of(entry: pb.Metadata) -> tuple[str, object] | None:
    """("text", str) or ("binary", bytes): the decoded value; None when usermeta could not decode it."""
    kind = entry.value.WhichOneof("kind")
    return None if kind is None else (kind, getattr(entry.value, kind))


def fails_with(code: grpc.StatusCode, call, request, metadata=()) -> "rpc_status.status_pb2.Status":
    """Makes a call that must fail with `code`; returns its google.rpc.Status with the details."""
    try:
        answer = call(request, metadata=metadata, timeout=TIMEOUT)
    except grpc.RpcError as error:
        check(error.code() == code, f"fails with {code.name}", f"{error.code().name}: {error.details()}")
        status = rpc_status.from_call(error)
        check(status is not None, "the error carries a google.rpc.Status (grpc-status-details-bin)")
        return status
    check(False, f"fails with {code.name}", answer)
    raise AssertionError("unreachable")


def unpacked(status, message_type):
    """The details of `status` that are of `message_type`, unpacked."""
    found = []
    for detail in status.details:
        if detail.Is(message_type.DESCRIPTOR):
            message = message_type()
            detail.Unpack(message)
            found.append(message)
    return found


def main() -> None:
    addr = os.environ["USERMETA_ADDR"]
    user, admin = bearer(os.environ["USER_TOKEN"]), bearer(os.environ["ADMIN_TOKEN"])
    demo_user_id = os.environ["DEMO_USER_ID"]
    print(f"== python grpcio {grpc.__version__} against {addr}")

    with grpc.insecure_channel(addr) as channel:
        grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
        health = health_pb2_grpc.HealthStub(channel)
        stub = pb_grpc.UserMetadataServiceStub(channel)

        print("-- grpc.health.v1.Health/Check")
        for service, name in (("", "the server"), (SERVICE, SERVICE)):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
            check(answer.status == health_pb2.HealthCheckResponse.SERVING, f"{name} is SERVING", answer)

        print("-- GetMyMetadata (userinfo)")
        answer = stub.GetMyMetadata(pb.GetMyMetadataRequest(), metadata=user, timeout=TIMEOUT)
        check(answer.user_id == demo_user_id, "user_id is the demo user", answer)
        contract = [m for m in answer.metadata if m.key == "ContractNumber"]
        check(len(contract) == 1 and value_of(contract[0]) == ("text", "1234"),
              "ContractNumber is decoded to the text 1234", answer)

        print("-- SetMetadata: a text and a binary value on yourself")
        answer = stub.SetMetadata(
            pb.SetMetadataRequest(entries=[
                pb.MetadataEntry(key=KEY, value=pb.MetadataValue(text="grüße")),
                pb.MetadataEntry(key=f"{KEY}.bin", value=pb.MetadataValue(binary=b"\xff\x00\x01")),
            ]),
            metadata=user, timeout=TIMEOUT,
        )
        check(answer.HasField("update_time"), "the write has an update_time", answer)

        print("-- GetMyMetadata (auth API, with timestamps) sees both")
        answer = stub.GetMyMetadata(
            pb.GetMyMetadataRequest(keys=[KEY, f"{KEY}.bin"], source=pb.METADATA_SOURCE_AUTH_API),
            metadata=user, timeout=TIMEOUT,
        )
        check([m.key for m in answer.metadata] == [KEY, f"{KEY}.bin"], "two entries, ordered by key", answer)
        check(value_of(answer.metadata[0]) == ("text", "grüße"), "the text value came back as text", answer)
        check(value_of(answer.metadata[1]) == ("binary", b"\xff\x00\x01"),
              "the non-UTF-8 value came back as binary", answer)
        check(all(m.HasField("create_time") and m.HasField("update_time") for m in answer.metadata),
              "the auth API gives create and update times", answer)

        print("-- ListMetadata of the demo user, as the admin, one entry a page")
        listing = pb.ListMetadataRequest(
            user_id=demo_user_id,
            key_filter=pb.KeyFilter(key=KEY, match=pb.KEY_MATCH_STARTS_WITH),
            page_size=1,
        )
        page = stub.ListMetadata(listing, metadata=admin, timeout=TIMEOUT)
        check([m.key for m in page.metadata] == [KEY], f"page 1 holds {KEY}", page)
        check(page.total_size == 2, "total_size is 2", page)
        check(page.next_page_token != "", "there is a next page", page)
        listing.page_token = page.next_page_token
        page = stub.ListMetadata(listing, metadata=admin, timeout=TIMEOUT)
        check([m.key for m in page.metadata] == [f"{KEY}.bin"] and page.next_page_token == "",
              f"page 2 holds {KEY}.bin and is the last", page)

        print("-- FindUsersByMetadata: who holds ContractNumber 1234, as the admin")
        found = stub.FindUsersByMetadata(
            pb.FindUsersByMetadataRequest(key="ContractNumber", value=pb.MetadataValue(text="1234")),
            metadata=admin, timeout=TIMEOUT)
        check([u.user_id for u in found.users] == [demo_user_id] and found.users[0].organization_id != "",
              "the demo user, with their organisation", found)

        print("-- BatchGetMetadata: the demo user and one ZITADEL does not know, as the admin")
        batch = stub.BatchGetMetadata(
            pb.BatchGetMetadataRequest(user_ids=[demo_user_id, "31415926535"], keys=["ContractNumber"]),
            metadata=admin, timeout=TIMEOUT)
        check([r.user_id for r in batch.results] == [demo_user_id, "31415926535"],
              "one result per user, in request order", batch)
        check(not batch.results[0].HasField("error")
              and [(m.key, value_of(m)) for m in batch.results[0].metadata] == [("ContractNumber", ("text", "1234"))],
              "the demo user's ContractNumber is 1234", batch.results[0])
        missing = batch.results[1].error
        infos = unpacked(missing, error_details_pb2.ErrorInfo)
        check(batch.results[1].HasField("error") and missing.code == grpc.StatusCode.NOT_FOUND.value[0]
              and [i.reason for i in infos] == ["USER_NOT_FOUND"],
              "the unknown user's result is NOT_FOUND with ErrorInfo USER_NOT_FOUND", batch.results[1])

        print("-- DeleteMetadata both, then they are gone")
        answer = stub.DeleteMetadata(pb.DeleteMetadataRequest(keys=[KEY, f"{KEY}.bin"]), metadata=user,
                                     timeout=TIMEOUT)
        check(answer.HasField("update_time"), "the delete has an update_time", answer)
        answer = stub.GetMyMetadata(
            pb.GetMyMetadataRequest(keys=[KEY, f"{KEY}.bin"], source=pb.METADATA_SOURCE_AUTH_API),
            metadata=user, timeout=TIMEOUT,
        )
        check(len(answer.metadata) == 0, "no entries are left", answer)

        print("-- an empty key: INVALID_ARGUMENT with a google.rpc.BadRequest")
        status = fails_with(
            grpc.StatusCode.INVALID_ARGUMENT, stub.SetMetadata,
            pb.SetMetadataRequest(entries=[pb.MetadataEntry(key="", value=pb.MetadataValue(text="x"))]),
            metadata=user,
        )
        bad_requests = unpacked(status, error_details_pb2.BadRequest)
        check(len(bad_requests) == 1 and [v.field for v in bad_requests[0].field_violations] == ["entries[0].key"],
              "the details hold a BadRequest naming entries[0].key", status)

        print("-- no token: UNAUTHENTICATED with a google.rpc.ErrorInfo")
        status = fails_with(grpc.StatusCode.UNAUTHENTICATED, stub.GetMyMetadata, pb.GetMyMetadataRequest())
        infos = unpacked(status, error_details_pb2.ErrorInfo)
        check(len(infos) == 1 and infos[0].reason == "TOKEN_MISSING" and infos[0].domain == "usermeta",
              "the details hold ErrorInfo TOKEN_MISSING from domain usermeta", status)

    print("python: ok")


if __name__ == "__main__":
    main()
