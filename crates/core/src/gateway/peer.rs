//! Who is on the other end of a new connection: the socket's peer, and the client address the
//! per-address limit and token claims are judged by.

use std::net::{IpAddr, SocketAddr};

/// What the transport knows about a new connection once its upgrade is complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The socket's peer address.
    pub addr: SocketAddr,
    /// Request headers of the upgrade; only `X-Forwarded-For` is read, and only from a trusted proxy.
    pub headers: Vec<(String, String)>,
}

/// The client's address: the socket peer, or, when the peer is a trusted proxy, the nearest
/// untrusted hop of X-Forwarded-For (read right to left, so a client cannot forge its way in).
pub fn client_address(trusted_proxies: &[IpAddr], peer: &Peer) -> IpAddr {
    let trusted = |ip: &IpAddr| trusted_proxies.contains(ip);
    let peer_ip = peer.addr.ip();
    if !trusted(&peer_ip) {
        return peer_ip;
    }
    let hops = peer
        .headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("x-forwarded-for"))
        .flat_map(|(_, value)| value.split(','))
        .map(|hop| hop.trim().parse::<IpAddr>().ok())
        .collect::<Vec<_>>();
    for hop in hops.into_iter().rev() {
        match hop {
            Some(ip) if trusted(&ip) => continue,
            Some(ip) => return ip,
            None => break, // a garbled hop: trust nothing further left
        }
    }
    peer_ip
}
