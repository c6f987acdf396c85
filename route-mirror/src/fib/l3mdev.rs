//! VRFs (l3mdev) and the other link facts policy routing reads: a device's name (rules
//! name their `iif`/`oif`), its master, its VRF table, its interface group
//! (`suppress_ifgroup`).
//!
//! The kernel's `l3mdev_update_flow` gives a lookup its VRF before the rules run: the
//! VRF above the output device if there is one (flagged as "from oif"), else the VRF
//! above the input device. An `l3mdev` rule then uses that VRF's table
//! (`l3mdev_fib_rule_match`), and since 6.16 an `iif`/`oif` rule naming a VRF device also
//! matches flows on its ports. An `oif` that *is* a VRF device only steers the lookup
//! into the VRF: it is cleared before nexthops are matched.
//!
//! The `vrf` module is not built on the machines this is developed on, so this is
//! tested with synthesised link facts and messages ([`crate::netlink::vrf`]), not
//! against a kernel.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// The loopback device's index in every namespace (`LOOPBACK_IFINDEX`): output lookups
/// run with it as their input interface, which is why `iif lo` rules select locally
/// generated traffic.
pub const LOOPBACK_IFINDEX: u32 = 1;

/// What policy routing needs to know about one link.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkFacts {
    pub ifindex: u32,
    pub name: String,
    /// `IFLA_MASTER` (0: none).
    pub master: u32,
    /// `IFLA_VRF_TABLE` of a `vrf` device (`IFLA_INFO_KIND "vrf"`).
    pub vrf_table: Option<u32>,
    /// `IFLA_GROUP`.
    pub group: u32,
}

/// The links of one namespace, by index and by name.
#[derive(Debug, Clone, Default)]
pub struct LinkMap {
    by_index: HashMap<u32, LinkFacts>,
    by_name: HashMap<String, u32>,
}

impl LinkMap {
    pub fn insert(&mut self, l: LinkFacts) {
        if let Some(old) = self.by_index.get(&l.ifindex) {
            if self.by_name.get(&old.name) == Some(&l.ifindex) {
                self.by_name.remove(&old.name);
            }
        }
        self.by_name.insert(l.name.clone(), l.ifindex);
        self.by_index.insert(l.ifindex, l);
    }

    pub fn remove(&mut self, ifindex: u32) {
        if let Some(old) = self.by_index.remove(&ifindex) {
            if self.by_name.get(&old.name) == Some(&ifindex) {
                self.by_name.remove(&old.name);
            }
        }
    }

    pub fn get(&self, ifindex: u32) -> Option<&LinkFacts> {
        self.by_index.get(&ifindex)
    }

    pub fn ifindex(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    pub fn len(&self) -> usize {
        self.by_index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_index.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &LinkFacts> {
        self.by_index.values()
    }

    /// Whether `ifindex` is a VRF device (`netif_is_l3_master`).
    pub fn is_l3_master(&self, ifindex: u32) -> bool {
        self.get(ifindex).is_some_and(|l| l.vrf_table.is_some())
    }

    /// `l3mdev_master_ifindex_rcu`: the device itself if it is a VRF, else its master if
    /// that is a VRF (a VRF port), else 0. One level only: a port of a bridge that is
    /// itself a VRF port is not an l3 slave.
    pub fn l3mdev_of(&self, ifindex: u32) -> u32 {
        let Some(l) = self.get(ifindex) else { return 0 };
        if l.vrf_table.is_some() {
            ifindex
        } else if l.master != 0 && self.is_l3_master(l.master) {
            l.master
        } else {
            0
        }
    }

    /// The table of VRF device `ifindex`.
    pub fn vrf_table(&self, ifindex: u32) -> Option<u32> {
        self.get(ifindex).and_then(|l| l.vrf_table)
    }

    /// The VRF device of `name`'s table, for `--vrf NAME`.
    pub fn vrf_by_name(&self, name: &str) -> Option<(u32, u32)> {
        let i = self.ifindex(name)?;
        Some((i, self.vrf_table(i)?))
    }

    pub fn group(&self, ifindex: u32) -> u32 {
        self.get(ifindex).map_or(0, |l| l.group)
    }
}

/// The VRF a lookup runs in, as `l3mdev_update_flow` sets it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct L3Flow {
    /// `flowi_l3mdev`: the VRF device (0: none).
    pub l3mdev: u32,
    /// `FLOWI_FLAG_L3MDEV_OIF`: the VRF came from the output device.
    pub from_oif: bool,
    /// The output device after the update: 0 when it was the VRF device itself.
    pub oif: u32,
}

/// `l3mdev_update_flow` for a lookup with output device `oif` and input device `iif`
/// (0: none; output lookups pass [`LOOPBACK_IFINDEX`]).
pub fn update_flow(links: &LinkMap, oif: u32, iif: u32) -> L3Flow {
    if oif != 0 && links.get(oif).is_some() {
        return L3Flow {
            l3mdev: links.l3mdev_of(oif),
            from_oif: true,
            // "oif set to L3mdev directs lookup to its table; reset to avoid oif match".
            oif: if links.is_l3_master(oif) { 0 } else { oif },
        };
    }
    let l3mdev = if iif > LOOPBACK_IFINDEX {
        links.l3mdev_of(iif)
    } else {
        0
    };
    L3Flow {
        l3mdev,
        from_oif: false,
        oif,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// lo, a VRF `blue` (table 1001) with port eth1, a bridge `br0` enslaved to `blue`
    /// with port eth2, and eth3 outside any VRF (group 5).
    pub(crate) fn links() -> LinkMap {
        let mut m = LinkMap::default();
        let l = |ifindex, name: &str, master, vrf_table, group| LinkFacts {
            ifindex,
            name: name.into(),
            master,
            vrf_table,
            group,
        };
        m.insert(l(1, "lo", 0, None, 0));
        m.insert(l(10, "blue", 0, Some(1001), 0));
        m.insert(l(11, "eth1", 10, None, 0));
        m.insert(l(12, "br0", 10, None, 0));
        m.insert(l(13, "eth2", 12, None, 0));
        m.insert(l(14, "eth3", 0, None, 5));
        m
    }

    #[test]
    fn ports_and_nested_ports_map_to_their_vrf() {
        let m = links();
        assert_eq!(m.l3mdev_of(10), 10);
        assert_eq!(m.l3mdev_of(11), 10);
        assert_eq!(m.l3mdev_of(12), 10, "a bridge that is a VRF port");
        assert_eq!(
            m.l3mdev_of(13),
            0,
            "a port of that bridge is not an l3 slave"
        );
        assert_eq!(m.l3mdev_of(14), 0);
        assert_eq!(m.l3mdev_of(99), 0);
        assert_eq!(m.vrf_by_name("blue"), Some((10, 1001)));
        assert_eq!(m.vrf_by_name("eth1"), None);
        assert_eq!(m.group(14), 5);
    }

    #[test]
    fn update_flow_prefers_the_output_device_and_clears_a_vrf_oif() {
        let m = links();
        // Output through a VRF port: VRF from oif, oif kept for nexthop matching.
        assert_eq!(
            update_flow(&m, 11, LOOPBACK_IFINDEX),
            L3Flow {
                l3mdev: 10,
                from_oif: true,
                oif: 11
            }
        );
        // `ip route get ... vrf blue` passes the VRF as oif: cleared.
        assert_eq!(
            update_flow(&m, 10, LOOPBACK_IFINDEX),
            L3Flow {
                l3mdev: 10,
                from_oif: true,
                oif: 0
            }
        );
        // Forwarded from a VRF port.
        assert_eq!(
            update_flow(&m, 0, 11),
            L3Flow {
                l3mdev: 10,
                from_oif: false,
                oif: 0
            }
        );
        // Output from lo, no VRF anywhere.
        assert_eq!(update_flow(&m, 0, LOOPBACK_IFINDEX), L3Flow::default());
        // An existing oif decides, even outside any VRF: the iif is not consulted.
        assert_eq!(
            update_flow(&m, 14, 11),
            L3Flow {
                l3mdev: 0,
                from_oif: true,
                oif: 14
            }
        );
    }

    #[test]
    fn renames_and_removals_keep_the_name_index_right() {
        let mut m = links();
        m.insert(LinkFacts {
            ifindex: 14,
            name: "wan".into(),
            ..Default::default()
        });
        assert_eq!(m.ifindex("eth3"), None);
        assert_eq!(m.ifindex("wan"), Some(14));
        m.remove(14);
        assert_eq!(m.ifindex("wan"), None);
        assert_eq!(m.len(), 5);
    }
}
