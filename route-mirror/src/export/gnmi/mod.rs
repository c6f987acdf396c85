//! The gNMI export (`--gnmi-listen ADDR`): the mirrored forwarding tables as OpenConfig
//! AFTs, for gnmic, Telegraf, pygnmi and any other gNMI collector.
//!
//! Off by default. TLS needs a server certificate and key (`--gnmi-tls-cert`,
//! `--gnmi-tls-key`); `--gnmi-tls-client-ca` also requires and checks client
//! certificates. Plaintext is allowed only with `--gnmi-insecure`, and only on a
//! loopback address, so the FIB is never readable in the clear from the network.

pub mod encode;
pub mod path;
pub mod service;
pub mod snapshot;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tracing::info;

use crate::config::GnmiConfig;
use crate::export::afts::Afts;

/// The generated gNMI types and service trait (`third_party/gnmi`, built by build.rs).
#[allow(clippy::all, missing_docs)]
pub mod proto {
    pub use self::gnmi::*;
    pub mod gnmi_ext {
        tonic::include_proto!("gnmi_ext");
    }
    pub mod gnmi {
        tonic::include_proto!("gnmi");
    }
}

/// A running gNMI server.
pub struct Running {
    pub addr: SocketAddr,
    pub stats: Arc<service::GnmiStats>,
}

/// Binds and serves in the background; errors (bad certificates, address in use) are
/// returned before anything is served.
pub async fn serve(cfg: &GnmiConfig, hubs: Vec<Arc<Afts>>) -> Result<Running> {
    let addr = cfg.listen.context("no gNMI listen address")?;
    cfg.check().map_err(anyhow::Error::msg)?;
    let svc = service::Service::new(hubs, cfg.get_max_bytes);
    let stats = svc.stats.clone();
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .tcp_nodelay(true);
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => {
            let read =
                |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
            let mut tls = tonic::transport::ServerTlsConfig::new().identity(
                tonic::transport::Identity::from_pem(read(cert)?, read(key)?),
            );
            if let Some(ca) = &cfg.tls_client_ca {
                tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?));
            }
            builder = builder
                .tls_config(tls)
                .context("gNMI TLS configuration (certificate or key unusable)")?;
            true
        }
        _ => false,
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding gNMI listener {addr}"))?;
    let bound = listener.local_addr()?;
    if !tls && !bound.ip().is_loopback() {
        bail!("refusing plaintext gNMI on {bound}");
    }
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let router = builder.add_service(
        proto::g_nmi_server::GNmiServer::new(svc)
            .max_decoding_message_size(1 << 20)
            .max_encoding_message_size(usize::MAX),
    );
    tokio::spawn(async move {
        if let Err(e) = router.serve_with_incoming(incoming).await {
            tracing::error!(error = %e, "gNMI server ended");
        }
    });
    info!(addr = %bound, tls, client_certs = cfg.tls_client_ca.is_some(), "gNMI server listening");
    Ok(Running { addr: bound, stats })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_only_on_loopback() {
        let c = |listen: &str, insecure, tls: bool| GnmiConfig {
            listen: Some(listen.parse().unwrap()),
            insecure,
            tls_cert: tls.then(|| "c.pem".into()),
            tls_key: tls.then(|| "k.pem".into()),
            tls_client_ca: None,
            ..GnmiConfig::default()
        };
        assert!(c("127.0.0.1:9339", true, false).check().is_ok());
        assert!(c("[::1]:9339", true, false).check().is_ok());
        assert!(c("0.0.0.0:9339", true, false).check().is_err());
        assert!(c("192.0.2.1:9339", true, false).check().is_err());
        assert!(
            c("127.0.0.1:9339", false, false).check().is_err(),
            "no TLS, no --gnmi-insecure"
        );
        assert!(c("0.0.0.0:9339", false, true).check().is_ok());
        assert!(c("0.0.0.0:9339", true, true).check().is_err());
        assert!(GnmiConfig::default().check().is_ok(), "off");
    }
}
