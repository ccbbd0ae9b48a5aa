//! TLS on the gRPC port, mTLS with the client identity in the audit log, and a ZITADEL signed by a private CA
//! (userinfo, and introspection through the same trusted, pooled client).

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use usermeta::{
    api::pb::{
        GetMyMetadataRequest, SetMetadataRequest,
        user_metadata_service_client::UserMetadataServiceClient,
    },
    tls::TlsFiles,
};

use crate::support::*;

/// A CA that signs server and client certificates.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

struct Leaf {
    cert: String,
    key: String,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

fn leaf(ca: &Ca, common_name: &str, sans: &[&str]) -> Leaf {
    let mut params =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    Leaf {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

fn write(dir: &std::path::Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "usermeta-tls-{name}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Server TLS files for `localhost`, optionally requiring client certificates from `client_ca`.
fn server_files(ca: &Ca, client_ca: Option<&Ca>) -> TlsFiles {
    let dir = temp_dir("server");
    let server = leaf(ca, "usermeta", &["localhost"]);
    TlsFiles {
        cert_file: write(&dir, "server.pem", &server.cert),
        key_file: write(&dir, "server.key", &server.key),
        client_ca_file: client_ca.map(|c| write(&dir, "clients.pem", &c.pem)),
    }
}

async fn tls_client(
    addr: SocketAddr,
    ca: &Ca,
    identity: Option<&Leaf>,
) -> Result<UserMetadataServiceClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca.pem))
        .domain_name("localhost");
    if let Some(leaf) = identity {
        tls = tls.identity(Identity::from_pem(&leaf.cert, &leaf.key));
    }
    let channel = Channel::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(UserMetadataServiceClient::new(channel))
}

#[tokio::test]
async fn tls_serves_clients_that_trust_the_certificate_and_refuses_plaintext() {
    let app = TestApp::spawn().await;
    let ca = ca("usermeta test CA");
    let observed = app.another().tls(server_files(&ca, None)).spawn().await;
    let mut client = tls_client(observed.addr, &ca, None).await.unwrap();
    let answer = client
        .get_my_metadata(authed(GetMyMetadataRequest::default(), &app.alice_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.user_id, app.alice);

    // A plaintext client does not get an answer.
    let plaintext = Channel::from_shared(format!("http://{}", observed.addr))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plaintext {
        let refused = UserMetadataServiceClient::new(channel)
            .get_my_metadata(authed(GetMyMetadataRequest::default(), &app.alice_token))
            .await;
        assert!(refused.is_err());
    }
}

#[tokio::test]
async fn mtls_admits_clients_of_the_ca_and_audits_their_identity() {
    let logs = capture();
    let app = TestApp::spawn().await;
    let server_ca = ca("usermeta server CA");
    let client_ca = ca("usermeta client CA");
    let observed = app
        .another()
        .tls(server_files(&server_ca, Some(&client_ca)))
        .spawn()
        .await;
    let billing = leaf(&client_ca, "billing-7c1e", &["billing.internal"]);
    let mut client = tls_client(observed.addr, &server_ca, Some(&billing))
        .await
        .unwrap();
    client
        .set_metadata(authed(
            SetMetadataRequest {
                user_id: app.alice.clone(),
                entries: vec![entry("ContractNumber", text("9"))],
                ..Default::default()
            },
            &app.admin_token,
        ))
        .await
        .unwrap();
    let lines = logs.lines_with("billing-7c1e");
    let audit = lines
        .iter()
        .find(|line| line["target"] == "usermeta::audit")
        .unwrap_or_else(|| panic!("no audit line naming the client: {lines:?}"));
    assert_eq!(
        audit["fields"]["client_cert"],
        "CN=billing-7c1e SAN=dns:billing.internal"
    );
    assert_eq!(audit["fields"]["caller"], app.admin.as_str());

    // Without a client certificate, or with one from another CA: no call gets through.
    let stranger_ca = ca("someone else's CA");
    let stranger = leaf(&stranger_ca, "intruder", &["intruder.example"]);
    for identity in [None, Some(&stranger)] {
        let refused = match tls_client(observed.addr, &server_ca, identity).await {
            Err(_) => true,
            Ok(mut client) => client
                .get_my_metadata(authed(GetMyMetadataRequest::default(), &app.alice_token))
                .await
                .is_err(),
        };
        assert!(
            refused,
            "a client with {:?} got through",
            identity.map(|_| "a foreign cert")
        );
    }
}

#[tokio::test]
async fn unusable_tls_files_fail_start_up_naming_the_setting() {
    let app = TestApp::spawn().await;
    let dir = temp_dir("bad");
    let files = TlsFiles {
        cert_file: write(&dir, "not-a-cert.pem", "hello"),
        key_file: write(&dir, "key.pem", "hello"),
        client_ca_file: None,
    };
    let error = app
        .another()
        .tls(files)
        .build()
        .await
        .err()
        .expect("start-up fails")
        .to_string();
    assert!(error.contains("USERMETA_TLS_CERT_FILE"), "{error}");
    assert!(error.contains("not-a-cert.pem"), "{error}");
}

/// TLS as a ZITADEL with a certificate from `ca` for `localhost` serves it: HTTP/2 and HTTP/1.1 by ALPN.
fn zitadel_tls(ca: &Ca) -> tokio_rustls::TlsAcceptor {
    use tokio_rustls::rustls::{
        self,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    };
    let server = leaf(ca, "zitadel", &["localhost"]);
    let certs = vec![CertificateDer::from_pem_slice(server.cert.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(server.key.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// A ZITADEL userinfo endpoint over TLS as [`zitadel_tls`], with the HTTP version of every request it served.
async fn private_zitadel(
    ca: &Ca,
    sub: &str,
) -> (String, Arc<std::sync::Mutex<Vec<http::Version>>>) {
    let acceptor = zitadel_tls(ca);
    let claims = serde_json::json!({"sub": sub});
    let router = axum::Router::new().route(
        "/oidc/v1/userinfo",
        axum::routing::get(move || {
            let claims = claims.clone();
            async move { axum::Json(claims) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let versions = Arc::new(std::sync::Mutex::new(Vec::new()));
    let served = Arc::clone(&versions);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let router = router.clone();
            let served = Arc::clone(&served);
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |request: http::Request<_>| {
                    served.lock().unwrap().push(request.version());
                    tower::ServiceExt::oneshot(router.clone(), request)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
            });
        }
    });
    (format!("https://localhost:{port}"), versions)
}

#[tokio::test]
async fn a_privately_signed_zitadel_is_trusted_only_with_its_ca_file() {
    let app = TestApp::spawn().await;
    let zitadel_ca = ca("private ZITADEL CA");
    let (url, versions) = private_zitadel(&zitadel_ca, "u-private-1").await;

    let untrusting = app.another().zitadel_url(&url).spawn().await;
    let status = untrusting
        .client
        .clone()
        .get_my_metadata(authed(GetMyMetadataRequest::default(), "any-token"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");

    let dir = temp_dir("zitadel-ca");
    let ca_file = write(&dir, "zitadel-ca.pem", &zitadel_ca.pem);
    let trusting = app
        .another()
        .zitadel_url(&url)
        .zitadel_roots(usermeta::tls::zitadel_roots(&ca_file).unwrap())
        .spawn()
        .await;
    let answer = trusting
        .client
        .clone()
        .get_my_metadata(authed(GetMyMetadataRequest::default(), "any-token"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.user_id, "u-private-1");
    let versions = versions.lock().unwrap().clone();
    assert!(
        !versions.is_empty() && versions.iter().all(|v| *v == http::Version::HTTP_2),
        "HTTP/2 where ZITADEL's TLS offers it: {versions:?}"
    );
}

/// A TLS front for `backend` (the stand-in), as [`zitadel_tls`]: every stand-in endpoint behind a
/// privately-signed certificate.
async fn tls_front(ca: &Ca, backend: SocketAddr) -> String {
    let acceptor = zitadel_tls(ca);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let (Ok(mut tls), Ok(mut plain)) = (
                    acceptor.accept(tcp).await,
                    tokio::net::TcpStream::connect(backend).await,
                ) else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    format!("https://localhost:{port}")
}

#[tokio::test]
async fn introspection_trusts_a_privately_signed_zitadel_with_its_ca_file() {
    use usermeta::caller::{IdentityConfig, IntrospectionAuth};
    let app = TestApp::spawn().await;
    let project = app.standin.create_project(&app.org);
    let (client_id, secret) = app.standin.add_api_app_with_secret(&project);
    let zitadel_ca = ca("private ZITADEL CA");
    let backend = app
        .standin
        .url()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let url = tls_front(&zitadel_ca, backend).await;
    let dir = temp_dir("zitadel-ca-introspection");
    let ca_file = write(&dir, "zitadel-ca.pem", &zitadel_ca.pem);
    let TestApp {
        addr, stop: _stop, ..
    } = TestApp::builder()
        .zitadel_url(&url)
        .pat(&app.service_pat)
        .identity(IdentityConfig {
            introspection: Some(IntrospectionAuth::ClientSecret {
                client_id,
                secret: secret.into(),
            }),
            jwt: None,
        })
        .zitadel_roots(usermeta::tls::zitadel_roots(&ca_file).unwrap())
        .spawn()
        .await;

    let audience = format!("urn:zitadel:iam:org:project:id:{project}:aud");
    let mut scopes = FULL_SCOPES.to_vec();
    scopes.push(&audience);
    let token = app.standin.issue_token(&app.alice, &scopes);
    let answer = connect(addr)
        .await
        .get_my_metadata(authed(GetMyMetadataRequest::default(), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.user_id, app.alice);
    assert_eq!(app.standin.introspection_requests(), 1);
    assert_eq!(
        app.standin.connections_accepted(),
        1,
        "introspection and userinfo share a connection"
    );
}
