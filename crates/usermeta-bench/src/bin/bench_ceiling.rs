//! Benchmark ceiling: a bare tonic server answering GetMyMetadata with a fixed message of the same size as
//! usermeta's answer for the bench user, and Envoy's Check (envoy-types' generated server, as any tonic
//! ext_authz server would be built) with the same answer usermeta gives the bench user's request, doing no
//! other work. Usage: `bench_ceiling <listen> <user_id>`.

#[path = "../common.rs"]
mod common;

use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, header_value_option,
};
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, OkHttpResponse,
    authorization_server::{Authorization, AuthorizationServer},
    check_response::HttpResponse,
};
use envoy_types::pb::google::{protobuf::BoolValue, rpc};
use tonic::{Request, Response, Status, transport::Server};
use usermeta::api::pb::{
    self,
    user_metadata_service_server::{UserMetadataService, UserMetadataServiceServer},
};

struct Ceiling {
    answer: pb::GetMyMetadataResponse,
}

#[tonic::async_trait]
impl UserMetadataService for Ceiling {
    async fn get_my_metadata(
        &self,
        _: Request<pb::GetMyMetadataRequest>,
    ) -> Result<Response<pb::GetMyMetadataResponse>, Status> {
        Ok(Response::new(self.answer.clone()))
    }

    async fn list_metadata(
        &self,
        _: Request<pb::ListMetadataRequest>,
    ) -> Result<Response<pb::ListMetadataResponse>, Status> {
        Err(Status::unimplemented("ceiling serves GetMyMetadata only"))
    }

    async fn set_metadata(
        &self,
        _: Request<pb::SetMetadataRequest>,
    ) -> Result<Response<pb::SetMetadataResponse>, Status> {
        Err(Status::unimplemented("ceiling serves GetMyMetadata only"))
    }

    async fn delete_metadata(
        &self,
        _: Request<pb::DeleteMetadataRequest>,
    ) -> Result<Response<pb::DeleteMetadataResponse>, Status> {
        Err(Status::unimplemented("ceiling serves GetMyMetadata only"))
    }

    async fn find_users_by_metadata(
        &self,
        _: Request<pb::FindUsersByMetadataRequest>,
    ) -> Result<Response<pb::FindUsersByMetadataResponse>, Status> {
        Err(Status::unimplemented("ceiling serves GetMyMetadata only"))
    }

    async fn batch_get_metadata(
        &self,
        _: Request<pb::BatchGetMetadataRequest>,
    ) -> Result<Response<pb::BatchGetMetadataResponse>, Status> {
        Err(Status::unimplemented("ceiling serves GetMyMetadata only"))
    }

    async fn list_organization_metadata(
        &self,
        _: Request<pb::ListOrganizationMetadataRequest>,
    ) -> Result<Response<pb::ListOrganizationMetadataResponse>, Status> {
        Err(Status::unimplemented("ceiling serves GetMyMetadata only"))
    }

    async fn set_organization_metadata(
        &self,
        _: Request<pb::SetOrganizationMetadataRequest>,
    ) -> Result<Response<pb::SetOrganizationMetadataResponse>, Status> {
        Err(Status::unimplemented("ceiling serves GetMyMetadata only"))
    }

    async fn delete_organization_metadata(
        &self,
        _: Request<pb::DeleteOrganizationMetadataRequest>,
    ) -> Result<Response<pb::DeleteOrganizationMetadataResponse>, Status> {
        Err(Status::unimplemented("ceiling serves GetMyMetadata only"))
    }

    type WatchMetadataStream = usermeta::api::ChangeStream;

    async fn watch_metadata(
        &self,
        _: Request<pb::WatchMetadataRequest>,
    ) -> Result<Response<Self::WatchMetadataStream>, Status> {
        Err(Status::unimplemented("ceiling serves GetMyMetadata only"))
    }
}

/// Envoy's Check, answered with what usermeta answers the bench user's request: OK, the user id and the
/// contract number as upstream headers.
struct CheckCeiling {
    answer: CheckResponse,
}

#[tonic::async_trait]
impl Authorization for CheckCeiling {
    async fn check(&self, _: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(self.answer.clone()))
    }
}

fn check_answer(user_id: &str) -> CheckResponse {
    let header = |key: &str, value: &str| HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: value.to_owned(),
            raw_value: Vec::new(),
        }),
        #[allow(deprecated)]
        append: Some(BoolValue { value: false }),
        append_action: header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
        keep_empty_value: false,
    };
    let contract = common::METADATA
        .iter()
        .find(|(key, _)| *key == "ContractNumber")
        .map_or("", |(_, value)| {
            std::str::from_utf8(value).unwrap_or_default()
        });
    CheckResponse {
        status: Some(rpc::Status::default()),
        dynamic_metadata: None,
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: vec![
                header("x-user-id", user_id),
                header("x-user-contract-number", contract),
            ],
            ..OkHttpResponse::default()
        })),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen = args
        .next()
        .ok_or("usage: bench_ceiling <listen> <user_id>")?
        .parse()?;
    let user_id = args
        .next()
        .ok_or("usage: bench_ceiling <listen> <user_id>")?;
    let metadata = common::METADATA
        .iter()
        .map(|(key, value)| pb::Metadata {
            key: (*key).into(),
            value: Some(pb::MetadataValue {
                kind: Some(pb::metadata_value::Kind::Text(
                    String::from_utf8_lossy(value).into_owned(),
                )),
            }),
            create_time: None,
            update_time: None,
            ..Default::default()
        })
        .collect();
    let check = CheckCeiling {
        answer: check_answer(&user_id),
    };
    let ceiling = Ceiling {
        answer: pb::GetMyMetadataResponse { user_id, metadata },
    };
    Server::builder()
        .add_service(UserMetadataServiceServer::new(ceiling))
        .add_service(AuthorizationServer::new(check))
        .serve(listen)
        .await?;
    Ok(())
}
