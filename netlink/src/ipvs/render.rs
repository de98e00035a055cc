//! `ipvsadm -Sn` text for services and real servers.
//!
//! `ipvsadm -Sn` is the independent oracle in our lab tests, so this must print exactly what
//! ipvsadm prints for the same kernel entry (checked against the real tool in the lab tests).

use std::fmt::Write as _;
use std::net::IpAddr;

use super::types::{
    AddressFamily, Destination, ForwardMethod, Service, ServiceFlags, ServiceKey, SocketText,
    TunnelType,
};

/// `-t 10.0.0.1:80`, `-u [fd00::1]:53`, `-f 7` or `-f 7 -6`.
fn service_selector(key: &ServiceKey) -> String {
    match key {
        ServiceKey::Inet {
            protocol,
            addr,
            port,
        } => format!(
            "{} {}",
            protocol.ipvsadm_switch_str(),
            SocketText(*addr, *port)
        ),
        ServiceKey::Fwmark { family, mark } => match family {
            AddressFamily::Inet => format!("-f {mark}"),
            AddressFamily::Inet6 => format!("-f {mark} -6"),
        },
    }
}

/// Scheduler flag names as ipvsadm prints them after `-b`.
fn sched_flag_names(service: &Service) -> Vec<&'static str> {
    let (one, two, three) = match service.scheduler.as_str() {
        "sh" => ("sh-fallback", "sh-port", "flag-3"),
        "mh" => ("mh-fallback", "mh-port", "flag-3"),
        _ => ("flag-1", "flag-2", "flag-3"),
    };
    let flags = service.flags;
    [
        (ServiceFlags::SCHED1, one),
        (ServiceFlags::SCHED2, two),
        (ServiceFlags::SCHED3, three),
    ]
    .into_iter()
    .filter(|(bit, _)| flags.contains(*bit))
    .map(|(_, name)| name)
    .collect()
}

/// Appends the `-A …` line of a service.
pub(crate) fn write_service(out: &mut String, s: &Service) {
    let _ = write!(out, "-A {} -s {}", service_selector(&s.key), s.scheduler);
    if s.flags.contains(ServiceFlags::PERSISTENT) {
        let _ = write!(out, " -p {}", s.timeout);
        let family = s.key.family();
        if s.netmask != family.host_netmask() {
            match family {
                AddressFamily::Inet => {
                    let _ = write!(out, " -M {}", std::net::Ipv4Addr::from(s.netmask));
                }
                AddressFamily::Inet6 => {
                    let _ = write!(out, " -M {}", s.netmask);
                }
            }
        }
        if let Some(pe) = &s.persistence_engine {
            let _ = write!(out, " --pe {pe}");
        }
    }
    if s.flags.contains(ServiceFlags::ONEPACKET) {
        out.push_str(" -o");
    }
    // ipvsadm 1.31 prints the scheduler flags last (`-s sh -o -b sh-fallback,sh-port`).
    let sched_flags = sched_flag_names(s);
    if !sched_flags.is_empty() {
        let _ = write!(out, " -b {}", sched_flags.join(","));
    }
    out.push('\n');
}

fn forward_switch(f: &ForwardMethod) -> &'static str {
    match f {
        ForwardMethod::Masquerade => "-m",
        ForwardMethod::Tunnel { .. } => "-i",
        ForwardMethod::DirectRoute | ForwardMethod::LocalNode | ForwardMethod::Bypass => "-g",
    }
}

/// Appends the `-a …` line of a real server of `key`.
pub(crate) fn write_destination(out: &mut String, key: &ServiceKey, d: &Destination) {
    let _ = write!(
        out,
        "-a {} -r {} {} -w {}",
        service_selector(key),
        destination_text(d.addr, d.port),
        forward_switch(&d.forward),
        d.weight
    );
    // ipvsadm 1.31 names the tunnel type even for the default (ipip), and never prints the
    // -x / -y thresholds in -S output (checked against the real tool in the lab tests).
    if let ForwardMethod::Tunnel { kind, port, flags } = d.forward {
        match kind {
            TunnelType::Ipip => out.push_str(" --tun-type ipip"),
            TunnelType::Gue => {
                let _ = write!(out, " --tun-type gue --tun-port {port}");
                write_tunnel_csum(out, flags);
            }
            TunnelType::Gre => {
                out.push_str(" --tun-type gre");
                write_tunnel_csum(out, flags);
            }
        }
    }
    out.push('\n');
}

/// `IP_VS_TUNNEL_ENCAP_FLAG_CSUM` / `_REMCSUM`.
fn write_tunnel_csum(out: &mut String, flags: u16) {
    const CSUM: u16 = 1 << 0;
    const REMCSUM: u16 = 1 << 1;
    if flags & REMCSUM != 0 {
        out.push_str(" --tun-remcsum");
    } else if flags & CSUM != 0 {
        out.push_str(" --tun-csum");
    } else {
        out.push_str(" --tun-nocsum");
    }
}

fn destination_text(addr: IpAddr, port: u16) -> String {
    SocketText(addr, port).to_string()
}
