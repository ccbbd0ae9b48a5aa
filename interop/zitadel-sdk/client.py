"""The stand-in's v2 user and organisation services driven by ZITADEL's official Python SDK (zitadel-client).

Reads the stand-in's seed line ({"url","pat","user_id","org_id"}) from STANDIN_SEED, then through the SDK:
sets two keys (one value binary), lists with a key filter, lists everything, deletes one key, lists again and
gets the user by id; then the same for the organisation's own metadata (OrganizationService
Set/List/DeleteOrganizationMetadata, which the pinned SDK has although it is named for ZITADEL 4.1) and
ListOrganizations by id. Every answer must parse into the SDK's model classes, values must round-trip byte-exact
and the deleted key must be gone. Any mismatch raises, so the script exits non-zero.
"""

import base64
import importlib.metadata
import json
import os
import sys

import zitadel_client
from zitadel_client.models.organization_service_delete_organization_metadata_request import (
    OrganizationServiceDeleteOrganizationMetadataRequest,
)
from zitadel_client.models.organization_service_delete_organization_metadata_response import (
    OrganizationServiceDeleteOrganizationMetadataResponse,
)
from zitadel_client.models.organization_service_list_organization_metadata_request import (
    OrganizationServiceListOrganizationMetadataRequest,
)
from zitadel_client.models.organization_service_list_organization_metadata_response import (
    OrganizationServiceListOrganizationMetadataResponse,
)
from zitadel_client.models.organization_service_list_organizations_request import OrganizationServiceListOrganizationsRequest
from zitadel_client.models.organization_service_metadata import OrganizationServiceMetadata
from zitadel_client.models.organization_service_metadata_key_filter import OrganizationServiceMetadataKeyFilter
from zitadel_client.models.organization_service_metadata_search_filter import OrganizationServiceMetadataSearchFilter
from zitadel_client.models.organization_service_organization_id_query import OrganizationServiceOrganizationIDQuery
from zitadel_client.models.organization_service_pagination_request import OrganizationServicePaginationRequest
from zitadel_client.models.organization_service_search_query import OrganizationServiceSearchQuery
from zitadel_client.models.organization_service_set_organization_metadata_request import (
    OrganizationServiceSetOrganizationMetadataRequest,
)
from zitadel_client.models.organization_service_set_organization_metadata_response import (
    OrganizationServiceSetOrganizationMetadataResponse,
)
from zitadel_client.models.organization_service_text_filter_method import OrganizationServiceTextFilterMethod
from zitadel_client.models.user_service_delete_user_metadata_request import UserServiceDeleteUserMetadataRequest
from zitadel_client.models.user_service_delete_user_metadata_response import UserServiceDeleteUserMetadataResponse
from zitadel_client.models.user_service_get_user_by_id_request import UserServiceGetUserByIDRequest
from zitadel_client.models.user_service_get_user_by_id_response import UserServiceGetUserByIDResponse
from zitadel_client.models.user_service_list_user_metadata_request import UserServiceListUserMetadataRequest
from zitadel_client.models.user_service_list_user_metadata_response import UserServiceListUserMetadataResponse
from zitadel_client.models.user_service_metadata import UserServiceMetadata
from zitadel_client.models.user_service_metadata_key_filter import UserServiceMetadataKeyFilter
from zitadel_client.models.user_service_metadata_search_filter import UserServiceMetadataSearchFilter
from zitadel_client.models.user_service_pagination_request import UserServicePaginationRequest
from zitadel_client.models.user_service_set_user_metadata_request import UserServiceSetUserMetadataRequest
from zitadel_client.models.user_service_set_user_metadata_response import UserServiceSetUserMetadataResponse
from zitadel_client.models.user_service_text_filter_method import UserServiceTextFilterMethod
from zitadel_client.models.user_service_user_state import UserServiceUserState

checks = 0


def check(condition, what):
    global checks
    if not condition:
        raise AssertionError(f"FAIL {what}")
    checks += 1
    print(f"   ok   {what}")


def value_of(entry):
    """The SDK leaves bytes fields as the wire's base64 text; decode it strictly (padded standard base64)."""
    check(isinstance(entry.value, str), f"{entry.key}: value arrives as base64 text")
    return base64.b64decode(entry.value, validate=True)


def listed(client, user_id, filters=None):
    answer = client.users.list_user_metadata(
        UserServiceListUserMetadataRequest(
            user_id=user_id,
            pagination=UserServicePaginationRequest(limit=100, asc=True),
            filters=filters,
        )
    )
    check(isinstance(answer, UserServiceListUserMetadataResponse), "ListUserMetadata parsed into its model")
    for entry in answer.metadata or []:
        check(isinstance(entry, UserServiceMetadata), f"{entry.key}: entry parsed into UserServiceMetadata")
    return answer


def main():
    seed = json.loads(os.environ["STANDIN_SEED"])
    url, user_id, org_id = seed["url"], seed["user_id"], seed["org_id"]
    expected_user = os.environ.get("EXPECT_USER_ID", user_id)
    print(f"-- zitadel-client {importlib.metadata.version('zitadel-client')} against {url}")
    # A plain http:// URL is used as given (URLUtil.build_hostname only adds https:// to bare host names).
    client = zitadel_client.Zitadel.with_access_token(url, seed["pat"])
    check(client.configuration.host == url, f"the SDK keeps the http:// URL ({client.configuration.host})")

    plan, blob = b"gold", bytes([0x00, 0xFB, 0xFF, 0x80, 0x7F, 0x0A])
    answer = client.users.set_user_metadata(
        UserServiceSetUserMetadataRequest(
            user_id=user_id,
            metadata=[
                UserServiceMetadata(key="plan", value=base64.b64encode(plan).decode()),
                UserServiceMetadata(key="blob", value=base64.b64encode(blob).decode()),
            ],
        )
    )
    check(isinstance(answer, UserServiceSetUserMetadataResponse), "SetUserMetadata parsed into its model")
    check(answer.set_date is not None and answer.set_date.tzinfo is not None, f"setDate is a timestamp ({answer.set_date})")

    only_blob = listed(
        client,
        user_id,
        [
            UserServiceMetadataSearchFilter(
                key_filter=UserServiceMetadataKeyFilter(key="blob", method=UserServiceTextFilterMethod.TEXT_FILTER_METHOD_EQUALS)
            )
        ],
    )
    check([m.key for m in only_blob.metadata or []] == ["blob"], "the key filter selects blob only")
    check(value_of(only_blob.metadata[0]) == blob, "the binary value round-trips byte-exact")
    check(int(only_blob.pagination.total_result) == 1, f"totalResult is 1 ({only_blob.pagination.total_result!r})")

    everything = listed(client, user_id)
    check([m.key for m in everything.metadata or []] == ["plan", "blob"], "both keys, oldest first with asc")
    check({m.key: value_of(m) for m in everything.metadata} == {"plan": plan, "blob": blob}, "both values byte-exact")
    check(int(everything.pagination.applied_limit) == 100, f"appliedLimit is 100 ({everything.pagination.applied_limit!r})")

    deleted = client.users.delete_user_metadata(UserServiceDeleteUserMetadataRequest(user_id=user_id, keys=["plan"]))
    check(isinstance(deleted, UserServiceDeleteUserMetadataResponse), "DeleteUserMetadata parsed into its model")
    check(deleted.deletion_date is not None, f"deletionDate is a timestamp ({deleted.deletion_date})")
    after = listed(client, user_id)
    check([m.key for m in after.metadata or []] == ["blob"], "the deleted key is gone, the other stays")
    check(value_of(after.metadata[0]) == blob, "the remaining value is unchanged")

    got = client.users.get_user_by_id(UserServiceGetUserByIDRequest(user_id=user_id))
    check(isinstance(got, UserServiceGetUserByIDResponse), "GetUserByID parsed into its model")
    check(got.user.user_id == expected_user, f"user_id is the seeded user ({got.user.user_id})")
    check(got.user.details.resource_owner == org_id, "resourceOwner is the seeded organisation")
    check(got.user.state == UserServiceUserState.USER_STATE_ACTIVE, f"state is USER_STATE_ACTIVE ({got.user.state})")
    check(got.user.human is not None and got.user.human.email.is_verified is True, "a human with a verified email")
    check(got.user.preferred_login_name == "alice@acme.localhost", f"preferredLoginName ({got.user.preferred_login_name})")

    # An error answer reaches the SDK as its ApiError with the Connect body.
    try:
        client.users.delete_user_metadata(UserServiceDeleteUserMetadataRequest(user_id=user_id, keys=["plan"]))
    except zitadel_client.ApiError as error:
        body = json.loads(error.response_body) if isinstance(error.response_body, (str, bytes)) else error.response_body
        check(error.code == 404 and body["code"] == "not_found", f"deleting a gone key is not_found ({error.code})")
    else:
        check(False, "deleting a gone key fails")
    organisation_metadata(client, org_id)
    print(f"zitadel-sdk: all {checks} checks passed")


def org_listed(client, org_id, filters=None):
    answer = client.organizations.list_organization_metadata(
        OrganizationServiceListOrganizationMetadataRequest(
            organization_id=org_id,
            pagination=OrganizationServicePaginationRequest(limit=100, asc=True),
            filters=filters,
        )
    )
    check(isinstance(answer, OrganizationServiceListOrganizationMetadataResponse), "ListOrganizationMetadata parsed into its model")
    for entry in answer.metadata or []:
        check(isinstance(entry, OrganizationServiceMetadata), f"{entry.key}: entry parsed into OrganizationServiceMetadata")
    return answer


def organisation_metadata(client, org_id):
    """The organisation's own metadata through zitadel.org.v2.OrganizationService (ZITADEL 4.7+)."""
    tier, logo = b"enterprise", bytes([0xFF, 0x00, 0x9C, 0x0D])
    answer = client.organizations.set_organization_metadata(
        OrganizationServiceSetOrganizationMetadataRequest(
            organization_id=org_id,
            metadata=[
                OrganizationServiceMetadata(key="tier", value=base64.b64encode(tier).decode()),
                OrganizationServiceMetadata(key="logo", value=base64.b64encode(logo).decode()),
            ],
        )
    )
    check(isinstance(answer, OrganizationServiceSetOrganizationMetadataResponse), "SetOrganizationMetadata parsed into its model")
    check(answer.set_date is not None and answer.set_date.tzinfo is not None, f"setDate is a timestamp ({answer.set_date})")

    only_logo = org_listed(
        client,
        org_id,
        [
            OrganizationServiceMetadataSearchFilter(
                key_filter=OrganizationServiceMetadataKeyFilter(
                    key="lo", method=OrganizationServiceTextFilterMethod.TEXT_FILTER_METHOD_STARTS_WITH
                )
            )
        ],
    )
    check([m.key for m in only_logo.metadata or []] == ["logo"], "the organisation key filter selects logo only")
    check(value_of(only_logo.metadata[0]) == logo, "the organisation's binary value round-trips byte-exact")
    check(int(only_logo.pagination.total_result) == 1, f"totalResult is 1 ({only_logo.pagination.total_result!r})")
    everything = org_listed(client, org_id)
    check([m.key for m in everything.metadata or []] == ["tier", "logo"], "both organisation keys, oldest first")
    check({m.key: value_of(m) for m in everything.metadata} == {"tier": tier, "logo": logo}, "both values byte-exact")

    deleted = client.organizations.delete_organization_metadata(
        OrganizationServiceDeleteOrganizationMetadataRequest(organization_id=org_id, keys=["tier"])
    )
    check(isinstance(deleted, OrganizationServiceDeleteOrganizationMetadataResponse), "DeleteOrganizationMetadata parsed into its model")
    check(deleted.deletion_date is not None, f"deletionDate is a timestamp ({deleted.deletion_date})")
    check([m.key for m in org_listed(client, org_id).metadata or []] == ["logo"], "the deleted organisation key is gone")

    orgs = client.organizations.list_organizations(
        OrganizationServiceListOrganizationsRequest(
            queries=[OrganizationServiceSearchQuery(id_query=OrganizationServiceOrganizationIDQuery(id=org_id))]
        )
    )
    check([o.id for o in orgs.result or []] == [org_id], "ListOrganizations by id finds the seeded organisation")
    none = client.organizations.list_organizations(
        OrganizationServiceListOrganizationsRequest(
            queries=[OrganizationServiceSearchQuery(id_query=OrganizationServiceOrganizationIDQuery(id="404"))]
        )
    )
    check(not none.result, "ListOrganizations by an unknown id finds none")

    # ZITADEL's all-or-nothing delete of a missing key, as the SDK sees it.
    try:
        client.organizations.delete_organization_metadata(
            OrganizationServiceDeleteOrganizationMetadataRequest(organization_id=org_id, keys=["tier"])
        )
    except zitadel_client.ApiError as error:
        body = json.loads(error.response_body) if isinstance(error.response_body, (str, bytes)) else error.response_body
        check(error.code == 404 and body["code"] == "not_found", f"deleting a gone organisation key is not_found ({error.code})")
    else:
        check(False, "deleting a gone organisation key fails")


if __name__ == "__main__":
    try:
        main()
    except Exception as error:  # any mismatch or SDK error: loud, non-zero
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(1)
