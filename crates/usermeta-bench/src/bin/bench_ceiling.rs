//! Benchmark ceiling: a bare tonic server answering GetMyMetadata with a fixed message of the same size as
//! usermeta's answer for the bench user, doing no other work. Usage: `bench_ceiling <listen> <user_id>`.

#[path = "../common.rs"]
mod common;

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

    type WatchMetadataStream = usermeta::api::ChangeStream;

    async fn watch_metadata(
        &self,
        _: Request<pb::WatchMetadataRequest>,
    ) -> Result<Response<Self::WatchMetadataStream>, Status> {
        Err(Status::unimplemented("ceiling serves GetMyMetadata only"))
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
        })
        .collect();
    let ceiling = Ceiling {
        answer: pb::GetMyMetadataResponse { user_id, metadata },
    };
    Server::builder()
        .add_service(UserMetadataServiceServer::new(ceiling))
        .serve(listen)
        .await?;
    Ok(())
}
