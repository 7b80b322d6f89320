//! Node id precedence (DESIGN section 2), hostname and boot id on the fixtures.

use std::fs;

use metalbus_agent::collectors::identity::{self, IdentityError};
use metalbus_agent::collectors::inventory;

use super::{copy_fixture, fixture};

#[test]
fn hostname_and_boot_id() {
    let vm = fixture("virtio-vm");
    assert_eq!(identity::hostname(&vm).as_deref(), Some("vm"));
    assert_eq!(
        identity::boot_id(&vm).as_deref(),
        Some("692ae97e-c32e-4e71-9b5a-0c9651f9de65")
    );
    let dell = fixture("dell-r650");
    assert_eq!(
        identity::boot_id(&dell).as_deref(),
        Some("5b1f2c9e-7d4a-4f0e-9c3b-2a6e8d1f4c70")
    );
}

#[test]
fn node_id_prefers_config_then_dmi_uuid() {
    let dell = fixture("dell-r650");
    let id = identity::node_id(None, &dell).unwrap();
    assert_eq!(id.as_str(), "4c4c4544-0058-4b10-8034-b7c04f504833");
    let configured = identity::node_id(Some("rack1-u07"), &dell).unwrap();
    assert_eq!(configured.as_str(), "rack1-u07");
    for bad in ["Rack1", "", "a/b"] {
        let err = identity::node_id(Some(bad), &dell).unwrap_err();
        assert!(
            matches!(&err, IdentityError::InvalidConfigured { value, .. } if value == bad),
            "{bad:?}: {err}"
        );
    }
}

#[test]
fn node_id_skips_junk_uuids_for_machine_id() {
    let dir = copy_fixture("dell-r650");
    let uuid = dir.path().join("sys/devices/virtual/dmi/id/product_uuid");
    for junk in [
        "03000200-0400-0500-0006-000700080009",
        "00000000-0000-0000-0000-000000000000",
        "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF",
        "Not Settable",
    ] {
        fs::write(&uuid, format!("{junk}\n")).unwrap();
        let id = identity::node_id(None, dir.path()).unwrap();
        assert_eq!(id.as_str(), "8f3e2a9c41d84b6fa0c7e15d92b3f604", "{junk}");
        assert_eq!(inventory::collect(dir.path()).system.uuid, None, "{junk}");
    }
    // No DMI at all (the VM): machine-id too.
    let vm = identity::node_id(None, &fixture("virtio-vm")).unwrap();
    assert_eq!(vm.as_str(), "3d1219c7c4c5404aaa1f6d2a48adfda4");
}

#[test]
fn node_id_falls_back_to_the_lowest_permanent_mac() {
    let vm = copy_fixture("virtio-vm");
    fs::remove_file(vm.path().join("etc/machine-id")).unwrap();
    assert_eq!(
        identity::node_id(None, vm.path()).unwrap().as_str(),
        "02fc00000001"
    );

    let dell = copy_fixture("dell-r650");
    fs::remove_file(dell.path().join("sys/devices/virtual/dmi/id/product_uuid")).unwrap();
    fs::write(dell.path().join("etc/machine-id"), "uninitialized\n").unwrap();
    // docker0's 02:42:... is lower but virtual.
    assert_eq!(
        identity::node_id(None, dell.path()).unwrap().as_str(),
        "b07b25d4e5f0"
    );
    // A MAC set by software (addr_assign_type 3) is not permanent.
    let first = "sys/devices/pci0000:16/0000:16:02.0/0000:17:00.0/net/eno12399np0";
    fs::write(dell.path().join(first).join("addr_assign_type"), "3\n").unwrap();
    assert_eq!(
        identity::node_id(None, dell.path()).unwrap().as_str(),
        "b07b25d4e5f1"
    );
    // Nothing left: an error that says what to do.
    let second = "sys/devices/pci0000:16/0000:16:02.0/0000:17:00.1/net/eno12409np1";
    fs::write(dell.path().join(second).join("addr_assign_type"), "1\n").unwrap();
    let err = identity::node_id(None, dell.path()).unwrap_err();
    assert!(matches!(err, IdentityError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("node_id"), "{err}");
}
