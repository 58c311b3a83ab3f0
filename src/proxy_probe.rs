//! Asks undermoon server proxies for their metadata epoch (`UMCTL GETEPOCH` over the Redis
//! protocol), as undermoon's broker does before it starts an expansion and when it recovers
//! its epoch.
//!
//! This runs in request handlers, never in the state machine: what the proxies answer
//! becomes at most a number inside a proposed command.

use std::time::Duration;

use futures::future::join_all;
use tokio::io::AsyncBufReadExt;
use tokio::io::AsyncWriteExt;
use tokio::io::BufReader;
use tokio::net::TcpStream;

/// How long one proxy may take to connect and answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

async fn probe(address: &str) -> Result<u64, String> {
    let ask = async {
        let mut stream = TcpStream::connect(address)
            .await
            .map_err(|e| e.to_string())?;
        stream
            .write_all(b"*2\r\n$5\r\nUMCTL\r\n$8\r\nGETEPOCH\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        BufReader::new(stream)
            .read_line(&mut line)
            .await
            .map_err(|e| e.to_string())?;
        line.strip_prefix(':')
            .and_then(|n| n.trim_end().parse::<u64>().ok())
            .ok_or_else(|| format!("unexpected answer {:?}", line.trim_end()))
    };
    tokio::time::timeout(PROBE_TIMEOUT, ask)
        .await
        .map_err(|_| "no answer within 1 s".to_string())?
}

/// The epoch of each proxy, or why it could not be read, in the order given.
pub async fn epochs(addresses: &[String]) -> Vec<Result<u64, String>> {
    join_all(addresses.iter().map(|a| probe(a))).await
}
