//! `container.id` from a process's cgroup path (`/proc/PID/cgroup`).
//!
//! Every container runtime puts a container's processes in a cgroup named
//! after its 64-hex-digit id, bare or wrapped as a systemd scope:
//!
//! | runtime | cgroup path |
//! |---|---|
//! | Docker, cgroupfs driver | `/docker/ID` |
//! | Docker, systemd driver | `/system.slice/docker-ID.scope` |
//! | containerd (Kubernetes) | `/kubepods.slice/.../cri-containerd-ID.scope`, `/kubepods/burstable/podUID/ID` |
//! | CRI-O | `/kubepods.slice/.../crio-ID.scope` |
//! | Podman | `/machine.slice/libpod-ID.scope` (rootless: under `user@UID.service`) |
//! | nerdctl | `/default/ID`, `/system.slice/nerdctl-ID.scope` |
//!
//! The nearest such component to the process wins (a container running
//! systemd nests more cgroups below its own). The monitor processes that
//! runtimes run next to a container (`crio-conmon-ID.scope`,
//! `libpod-conmon-ID.scope`) are not in it and get no id.

/// The container id in a `/proc/PID/cgroup` file (`hierarchy:controllers:path`
/// lines, cgroup v1 or v2), lower case; `None` outside containers.
pub fn container_id(cgroup: &str) -> Option<String> {
    cgroup_paths(cgroup).find_map(|path| path.rsplit('/').find_map(component_id))
}

/// The paths in a `/proc/PID/cgroup` file (`hierarchy:controllers:path`
/// lines).
pub fn cgroup_paths(cgroup: &str) -> impl Iterator<Item = &str> {
    cgroup.lines().filter_map(|line| line.splitn(3, ':').nth(2))
}

/// The id in one path component: `ID`, `ID.scope` or `PREFIX-ID.scope`.
fn component_id(part: &str) -> Option<String> {
    let part = part.strip_suffix(".scope").unwrap_or(part);
    let (prefix, id) = match part.rsplit_once('-') {
        Some((prefix, id)) => (prefix, id),
        None => ("", part),
    };
    if prefix.ends_with("conmon") {
        return None;
    }
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// Path shapes as the runtimes write them (ids replaced by `{ID}`).
    #[test]
    fn container_ids_from_real_path_shapes() {
        #[rustfmt::skip]
        let table: &[(&str, bool)] = &[
            // Docker, cgroup v1 (several hierarchies) and v2.
            ("12:memory:/docker/{ID}\n11:cpu,cpuacct:/docker/{ID}\n1:name=systemd:/docker/{ID}", true),
            ("0::/docker/{ID}", true),
            ("0::/system.slice/docker-{ID}.scope", true),
            ("0::/system.slice/docker-{ID}.scope/init.scope", true),
            ("5:pids:/system.slice/docker-{ID}.scope\n0::/system.slice/docker-{ID}.scope", true),
            // Kubernetes: containerd and CRI-O, systemd and cgroupfs drivers.
            ("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod3c2e1a8b_5f4d_4c1e_9b7a_2d6f8e0c1b3a.slice/cri-containerd-{ID}.scope", true),
            ("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod3c2e1a8b_5f4d_4c1e_9b7a_2d6f8e0c1b3a.slice/crio-{ID}.scope", true),
            ("0::/kubepods.slice/kubepods-pod3c2e1a8b_5f4d_4c1e_9b7a_2d6f8e0c1b3a.slice/cri-containerd-{ID}.scope", true),
            ("0::/kubepods/burstable/pod3c2e1a8b-5f4d-4c1e-9b7a-2d6f8e0c1b3a/{ID}", true),
            ("11:memory:/kubepods/besteffort/pod3c2e1a8b-5f4d-4c1e-9b7a-2d6f8e0c1b3a/{ID}", true),
            ("0::/kubepods/besteffort/pod3c2e1a8b-5f4d-4c1e-9b7a-2d6f8e0c1b3a/crio-{ID}", true),
            // An agent in its own cgroup namespace sees paths relative to it.
            ("0::/../../kubepods-besteffort-pod3c2e1a8b_5f4d.slice/cri-containerd-{ID}.scope", true),
            // Podman, rootful and rootless; nerdctl.
            ("0::/machine.slice/libpod-{ID}.scope", true),
            ("0::/machine.slice/libpod-{ID}.scope/container", true),
            ("0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope", true),
            ("0::/default/{ID}", true),
            ("0::/system.slice/nerdctl-{ID}.scope", true),
            // Not in a container.
            ("0::/machine.slice/libpod-conmon-{ID}.scope", false),
            ("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod3c2e1a8b_5f4d.slice/crio-conmon-{ID}.scope", false),
            ("0::/user.slice/user-0.slice/session-1.scope", false),
            ("0::/system.slice/nginx.service", false),
            ("0::/kubepods.slice/kubepods-besteffort.slice", false),
            ("0::/", false),
            ("0::/docker/0123abcd", false),
            ("", false),
            ("garbage", false),
        ];
        for (shape, want) in table {
            let cgroup = shape.replace("{ID}", ID);
            assert_eq!(
                container_id(&cgroup).as_deref(),
                want.then_some(ID),
                "{shape}"
            );
        }
        // Upper-case ids come out lower-case.
        let upper = format!("0::/docker/{}", ID.to_ascii_uppercase());
        assert_eq!(container_id(&upper).as_deref(), Some(ID));
    }
}
