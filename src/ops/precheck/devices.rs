//! The rules over a VM's devices: its disks and CD/DVD medium must be
//! reachable from the target as the same files (the target's agent looked
//! itself), a medium on host-local storage cannot move, and a vGPU's frame
//! buffer must cross the migration link while the VM is stunned.

use vmig_backend::api::{DriveProbe, HostFacts};
use vmig_backend::size::{format_size, parse_size};

use super::rules::{Fact, Facts, Finding, Origin, error, fact, warning};

/// What each side's agent found at the VM's image paths.
#[derive(Debug, Clone)]
pub struct Drives {
    pub source: Vec<DriveProbe>,
    /// The target's answer, or why it gave none (the rules fail closed).
    pub target: Result<Vec<DriveProbe>, String>,
}

impl Default for Drives {
    /// A VM without drives: nothing was asked.
    fn default() -> Self {
        Drives {
            source: Vec::new(),
            target: Ok(Vec::new()),
        }
    }
}

/// Migration links below this speed make a vGPU's stun long.
const VGPU_LINK_MBPS: u64 = 10_000;

fn probe<'a>(probes: &'a [DriveProbe], path: &str) -> Option<&'a DriveProbe> {
    probes.iter().find(|p| p.path == path)
}

fn probe_facts(host: &str, p: &DriveProbe) -> Vec<Fact> {
    vec![
        fact(format!("{host}.{}.root", p.path), &p.root, Origin::Declared),
        fact(format!("{host}.{}.shared", p.path), p.shared, Origin::Declared),
        fact(format!("{host}.{}.exists", p.path), p.exists, Origin::Measured),
        fact(format!("{host}.{}.size", p.path), p.size, Origin::Measured),
        fact(format!("{host}.{}.identity", p.path), &p.identity, Origin::Measured),
    ]
}

/// Why `path` cannot serve the VM on the target, in the words of the fix;
/// `what` names the drive ("disk", "CD/DVD medium").
fn unreachable(f: &Facts, path: &str, what: &str) -> Option<(String, Vec<Fact>)> {
    let (s, t) = (&f.source.name, &f.target.name);
    let targets = match &f.drives.target {
        Ok(probes) => probes,
        Err(why) => {
            return Some((
                format!(
                    "{t} could not say whether it reaches the {what} {path} ({why}); the move is refused until it can"
                ),
                vec![fact(format!("{t}.probe"), why, Origin::Measured)],
            ));
        }
    };
    let here = probe(&f.drives.source, path);
    let there = probe(targets, path);
    let mut facts = Vec::new();
    facts.extend(here.map(|p| probe_facts(s, p)).unwrap_or_default());
    facts.extend(there.map(|p| probe_facts(t, p)).unwrap_or_default());
    let (Some(here), Some(there)) = (here, there) else {
        return Some((format!("no answer about the {what} {path}"), facts));
    };
    let why = if !here.shared {
        format!(
            "the {what} {path} is on {s}'s host-local storage{}: move it to a storage root shared with {t}",
            here.root.as_ref().map(|r| format!(" (root {r})")).unwrap_or_default()
        )
    } else if there.root.is_none() {
        format!(
            "{t} has no storage root holding {path}: mount the shared storage on {t} (a [[storage]] root in its agent.toml)"
        )
    } else if !there.shared {
        format!("{t} holds {path} on a host-local root: only a root shared with {s} serves a moving VM")
    } else if !there.exists {
        format!("{t} cannot reach the {what} {path}: the shared storage is not mounted there, or the file is missing")
    } else if there.size != here.size {
        format!(
            "{path} is {} on {t} and {} on {s}: the two hosts see different files",
            format_size(there.size),
            format_size(here.size)
        )
    } else if there.identity != here.identity {
        format!(
            "{path} on {t} is another file than on {s} (its identity differs): the path names different storage on the two hosts"
        )
    } else {
        return None;
    };
    Some((why, facts))
}

/// `devices.reachable`: every disk must be the same file on the target.
pub fn reachable(f: &Facts) -> Option<Finding> {
    let mut reasons = Vec::new();
    let mut facts = Vec::new();
    for disk in &f.vm.disks {
        if let Some((why, used)) = unreachable(f, &disk.path, "disk") {
            reasons.push(why);
            facts.extend(used);
        }
    }
    if reasons.is_empty() {
        return None;
    }
    error("devices.reachable", reasons.join("; "), facts)
}

/// `cdrom.backing`: a connected medium must move with the VM; a disconnected
/// one warns when the target could not reconnect it.
pub fn cdrom(f: &Facts) -> Option<Finding> {
    let cd = f.vm.cdrom.as_ref()?;
    let vm = &f.vm.name;
    if cd.connected {
        let (why, mut facts) = unreachable(f, &cd.path, "CD/DVD medium")?;
        facts.push(fact("vm.cdrom.connected", true, Origin::Declared));
        let local = probe(&f.drives.source, &cd.path).is_some_and(|p| !p.shared);
        let message = if local {
            format!("{why}; or eject it first: `vmig vm cdrom {vm} eject`")
        } else {
            format!("{why}; or eject it: `vmig vm cdrom {vm} eject`")
        };
        return error("cdrom.backing", message, facts);
    }
    let (why, mut facts) = unreachable(f, &cd.path, "CD/DVD medium")?;
    facts.push(fact("vm.cdrom.connected", false, Origin::Declared));
    warning(
        "cdrom.backing",
        format!(
            "the CD/DVD drive is ejected, so it does not block the move, but reconnecting it on the target would fail: {why}"
        ),
        facts,
    )
}

/// `gpu.vgpu`: the frame buffer is copied while the VM is stunned; over a
/// link under 10 Gbit/s that stun is long.
pub fn vgpu(f: &Facts) -> Option<Finding> {
    let gpu = f.vm.vgpu.as_ref()?;
    let link = |h: &HostFacts| h.link_speed_mbps;
    let slowest = link(&f.source).min(link(&f.target));
    if slowest >= VGPU_LINK_MBPS {
        return None;
    }
    let bytes = parse_size(&gpu.framebuffer).unwrap_or(0);
    // Bits over megabits per second: milliseconds.
    let stun_ms = bytes.saturating_mul(8) / 1000 / slowest.max(1);
    let slow = if link(&f.source) <= link(&f.target) {
        &f.source
    } else {
        &f.target
    };
    warning(
        "gpu.vgpu",
        format!(
            "{}'s vGPU profile {} has a {} frame buffer; over {}'s {} Mbit/s migration link the VM would be stunned \
             about {:.1} s while it copies: move it over a link of 10 Gbit/s or more, or in a maintenance window",
            f.vm.name,
            gpu.profile,
            format_size(bytes),
            slow.name,
            slowest,
            stun_ms as f64 / 1000.0
        ),
        vec![
            fact("vm.vgpu.profile", &gpu.profile, Origin::Declared),
            fact("vm.vgpu.framebuffer_bytes", bytes, Origin::Declared),
            fact(format!("{}.link_speed_mbps", slow.name), slowest, Origin::Declared),
            fact("expected_stun_ms", stun_ms, Origin::Measured),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::super::rules::tests::facts;
    use super::super::rules::{Severity, check};
    use super::*;
    use vmig_backend::api::{CdromSpec, DiskSpec, VgpuSpec};

    fn probe(path: &str, root: Option<&str>, shared: bool, size: u64, id: &str) -> DriveProbe {
        DriveProbe {
            path: path.into(),
            root: root.map(str::to_string),
            shared,
            exists: size > 0,
            size,
            identity: (size > 0).then(|| id.to_string()),
            locked: false,
            error: None,
        }
    }

    const DISK: &str = "/srv/shared/vm1.img";
    const ISO: &str = "/srv/shared/tools.iso";

    fn with_disk(source: DriveProbe, target: DriveProbe) -> Facts {
        let mut f = facts();
        f.vm.disks = vec![DiskSpec {
            path: DISK.into(),
            size: None,
        }];
        f.drives = Drives {
            source: vec![source],
            target: Ok(vec![target]),
        };
        f
    }

    fn found(f: &Facts) -> Vec<(&'static str, Severity, String)> {
        check(f).into_iter().map(|x| (x.rule, x.severity, x.message)).collect()
    }

    #[test]
    fn a_disk_on_shared_storage_that_both_hosts_see_passes() {
        let shared = probe(DISK, Some("shared"), true, 1 << 30, "id:ab");
        assert!(check(&with_disk(shared.clone(), shared)).is_empty());
    }

    #[test]
    fn each_way_a_disk_can_be_out_of_reach_blocks_with_its_fix() {
        let good = probe(DISK, Some("shared"), true, 1 << 30, "id:ab");
        let cases = [
            (
                probe(DISK, Some("local"), false, 1 << 30, "id:ab"),
                good.clone(),
                "host-local",
            ),
            (
                good.clone(),
                probe(DISK, None, false, 1 << 30, "id:ab"),
                "no storage root",
            ),
            (
                good.clone(),
                probe(DISK, Some("local"), false, 1 << 30, "id:ab"),
                "host-local root",
            ),
            (good.clone(), probe(DISK, Some("shared"), true, 0, ""), "cannot reach"),
            (
                good.clone(),
                probe(DISK, Some("shared"), true, 1 << 29, "id:ab"),
                "different files",
            ),
            (
                good.clone(),
                probe(DISK, Some("shared"), true, 1 << 30, "id:cd"),
                "identity differs",
            ),
        ];
        for (source, target, words) in cases {
            let f = with_disk(source, target);
            let found = found(&f);
            assert_eq!(found.len(), 1, "{found:?}");
            assert_eq!((found[0].0, found[0].1), ("devices.reachable", Severity::Error));
            assert!(found[0].2.contains(words), "{words}: {}", found[0].2);
        }
        // A target that cannot answer fails closed.
        let mut f = with_disk(good.clone(), good);
        f.drives.target = Err("connection refused".into());
        assert!(found(&f)[0].2.contains("could not say"));
    }

    #[test]
    fn a_cdrom_blocks_when_connected_to_local_media_and_warns_when_ejected() {
        let mut f = facts();
        let local = probe(ISO, Some("local"), false, 4 << 20, "id:11");
        let missing = probe(ISO, Some("shared"), true, 0, "");
        f.drives = Drives {
            source: vec![local],
            target: Ok(vec![missing]),
        };
        f.vm.cdrom = Some(CdromSpec {
            path: ISO.into(),
            connected: true,
        });
        let found_now = found(&f);
        assert_eq!((found_now[0].0, found_now[0].1), ("cdrom.backing", Severity::Error));
        assert!(found_now[0].2.contains("vmig vm cdrom vm1 eject"), "{}", found_now[0].2);
        f.vm.cdrom.as_mut().unwrap().connected = false;
        let found_now = found(&f);
        assert_eq!((found_now[0].0, found_now[0].1), ("cdrom.backing", Severity::Warning));
        assert!(found_now[0].2.contains("reconnecting"));
        // Shared media both hosts reach: nothing to say, connected or not.
        let shared = probe(ISO, Some("shared"), true, 4 << 20, "id:11");
        f.drives = Drives {
            source: vec![shared.clone()],
            target: Ok(vec![shared]),
        };
        assert!(check(&f).is_empty());
        f.vm.cdrom.as_mut().unwrap().connected = true;
        assert!(check(&f).is_empty());
    }

    #[test]
    fn a_vgpu_over_a_slow_link_warns_with_its_stun_time() {
        let mut f = facts();
        f.vm.vgpu = Some(VgpuSpec {
            profile: "grid_a100-8c".into(),
            framebuffer: "8G".into(),
        });
        assert!(check(&f).is_empty(), "10 GbE is fast enough");
        f.target.link_speed_mbps = 1000;
        let found = found(&f);
        assert_eq!((found[0].0, found[0].1), ("gpu.vgpu", Severity::Warning));
        // 8 GiB over 1 Gbit/s: about 68.7 s.
        assert!(found[0].2.contains("about 68.7 s"), "{}", found[0].2);
    }
}
