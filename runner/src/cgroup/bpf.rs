//! The cgroup2 device filter: the device rules compiled to a
//! `BPF_PROG_TYPE_CGROUP_DEVICE` program (Linux 4.15), which the kernel
//! runs on every open and mknod of a device node in the cgroup.
//!
//! The program reads `struct bpf_cgroup_dev_ctx` (`access_type` = access
//! << 16 | type, `major`, `minor`) and checks the rules from the last to
//! the first: the first that matches decides, as the last matching rule
//! does on v1 (`devices.allow`/`devices.deny`); nothing matching is denied.

use super::{DeviceAccess, DeviceRule};

const BPF_LDX_W_MEM: u8 = 0x61;
const BPF_ALU64_AND_K: u8 = 0x57;
const BPF_ALU64_RSH_K: u8 = 0x77;
const BPF_ALU64_MOV_X: u8 = 0xbf;
const BPF_ALU64_MOV_K: u8 = 0xb7;
const BPF_JMP_JNE_K: u8 = 0x55;
const BPF_EXIT: u8 = 0x95;

/// `BPF_DEVCG_DEV_BLOCK`, `BPF_DEVCG_DEV_CHAR`.
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
/// `BPF_DEVCG_ACC_MKNOD`, `_READ`, `_WRITE`.
fn access_bits(access: &str) -> i32 {
    access.chars().fold(0, |bits, c| {
        bits | match c {
            'm' => 1,
            'r' => 2,
            'w' => 4,
            _ => 0,
        }
    })
}

/// One `struct bpf_insn` as the kernel reads it from memory.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    let mut b = [0u8; 8];
    b[0] = code;
    b[1] = (dst & 0x0f) | (src << 4);
    b[2..4].copy_from_slice(&off.to_ne_bytes());
    b[4..8].copy_from_slice(&imm.to_ne_bytes());
    u64::from_ne_bytes(b)
}

/// The program for `rules` (in v1 order: later rules override earlier).
pub fn device_program(rules: &[DeviceAccess]) -> Vec<u64> {
    // r1 = ctx; r3 = type, r4 = access, r5 = major, r6 = minor.
    let mut p = vec![
        insn(BPF_LDX_W_MEM, 2, 1, 0, 0),
        insn(BPF_ALU64_MOV_X, 3, 2, 0, 0),
        insn(BPF_ALU64_AND_K, 3, 0, 0, 0xffff),
        insn(BPF_ALU64_MOV_X, 4, 2, 0, 0),
        insn(BPF_ALU64_RSH_K, 4, 0, 0, 16),
        insn(BPF_LDX_W_MEM, 5, 1, 4, 0),
        insn(BPF_LDX_W_MEM, 6, 1, 8, 0),
    ];
    for r in rules.iter().rev() {
        p.extend(rule_block(&r.rule, r.allow));
        if matches_everything(&r.rule) {
            // The verdict is final: anything after would be unreachable,
            // which the verifier refuses.
            return p;
        }
    }
    p.push(insn(BPF_ALU64_MOV_K, 0, 0, 0, 0));
    p.push(insn(BPF_EXIT, 0, 0, 0, 0));
    p
}

fn matches_everything(rule: &DeviceRule) -> bool {
    rule.kind == 'a'
        && rule.major.is_none()
        && rule.minor.is_none()
        && access_bits(&rule.access) == 7
}

/// Tests for one rule, each jumping past the block on a mismatch, then the verdict.
fn rule_block(rule: &DeviceRule, allow: bool) -> Vec<u64> {
    // (code, dst, src, imm) of each test, before offsets are known.
    let mut tests: Vec<Vec<(u8, u8, u8, i32)>> = vec![];
    match rule.kind {
        'c' => tests.push(vec![(BPF_JMP_JNE_K, 3, 0, DEV_CHAR)]),
        'b' => tests.push(vec![(BPF_JMP_JNE_K, 3, 0, DEV_BLOCK)]),
        _ => {}
    }
    let allowed = access_bits(&rule.access);
    if allowed != 7 {
        // Requested access outside the rule's: r7 = r4 & !allowed; mismatch if non-zero.
        tests.push(vec![
            (BPF_ALU64_MOV_X, 7, 4, 0),
            (BPF_ALU64_AND_K, 7, 0, !allowed & 7),
            (BPF_JMP_JNE_K, 7, 0, 0),
        ]);
    }
    if let Some(m) = rule.major {
        tests.push(vec![(BPF_JMP_JNE_K, 5, 0, m as i32)]);
    }
    if let Some(m) = rule.minor {
        tests.push(vec![(BPF_JMP_JNE_K, 6, 0, m as i32)]);
    }
    let flat: Vec<(u8, u8, u8, i32)> = tests.into_iter().flatten().collect();
    let len = flat.len() + 2;
    let mut out = Vec::with_capacity(len);
    for (i, (code, dst, src, imm)) in flat.into_iter().enumerate() {
        let off = if code == BPF_JMP_JNE_K {
            // Skip to the first instruction after this block.
            (len - i - 1) as i16
        } else {
            0
        };
        out.push(insn(code, dst, src, off, imm));
    }
    out.push(insn(BPF_ALU64_MOV_K, 0, 0, 0, i32::from(allow)));
    out.push(insn(BPF_EXIT, 0, 0, 0, 0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Interprets the subset of eBPF the compiler emits, as the kernel would.
    fn run(p: &[u64], typ: i32, access: &str, major: u32, minor: u32) -> bool {
        let ctx = [
            ((access_bits(access) as u32) << 16) | typ as u32,
            major,
            minor,
        ];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let b = p[pc].to_ne_bytes();
            let (code, dst, src) = (b[0], usize::from(b[1] & 0xf), usize::from(b[1] >> 4));
            let off = i16::from_ne_bytes([b[2], b[3]]);
            let imm = i32::from_ne_bytes([b[4], b[5], b[6], b[7]]);
            assert!(src <= 10 && dst <= 10);
            pc += 1;
            match code {
                BPF_LDX_W_MEM => r[dst] = u64::from(ctx[off as usize / 4]),
                BPF_ALU64_MOV_X => r[dst] = r[src],
                BPF_ALU64_MOV_K => r[dst] = imm as i64 as u64,
                BPF_ALU64_AND_K => r[dst] &= imm as i64 as u64,
                BPF_ALU64_RSH_K => r[dst] >>= imm,
                BPF_JMP_JNE_K => {
                    if r[dst] != imm as i64 as u64 {
                        pc += off as usize;
                    }
                }
                BPF_EXIT => return r[0] == 1,
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    fn rules(list: &[(bool, &str)]) -> Vec<DeviceAccess> {
        list.iter()
            .map(|(allow, r)| DeviceAccess {
                allow: *allow,
                rule: r.parse().unwrap(),
            })
            .collect()
    }

    #[test]
    fn the_default_rules_allow_the_minimal_set_only() {
        let mut list = rules(&[(false, "a *:* rwm")]);
        list.extend(
            super::super::default_device_rules()
                .into_iter()
                .map(|rule| DeviceAccess { allow: true, rule }),
        );
        let p = device_program(&list);
        assert!(run(&p, DEV_CHAR, "rw", 1, 3), "/dev/null");
        assert!(run(&p, DEV_CHAR, "r", 1, 9), "/dev/urandom");
        assert!(run(&p, DEV_CHAR, "rw", 136, 7), "a pts");
        assert!(run(&p, DEV_BLOCK, "m", 8, 0), "mknod of anything");
        assert!(!run(&p, DEV_BLOCK, "r", 8, 0), "/dev/sda");
        assert!(!run(&p, DEV_CHAR, "r", 1, 1), "/dev/mem");
        assert!(!run(&p, DEV_CHAR, "rw", 10, 200), "/dev/net/tun");
    }

    #[test]
    fn later_rules_override_earlier_ones() {
        let p = device_program(&rules(&[
            (false, "a *:* rwm"),
            (true, "c 10:200 rw"),
            (false, "c 10:200 w"),
        ]));
        assert!(run(&p, DEV_CHAR, "r", 10, 200));
        assert!(!run(&p, DEV_CHAR, "w", 10, 200));
        assert!(!run(&p, DEV_CHAR, "m", 10, 200), "mknod was not allowed");
        assert!(!run(&p, DEV_CHAR, "r", 10, 201));
    }

    #[test]
    fn no_rules_deny_everything() {
        assert!(!run(&device_program(&[]), DEV_CHAR, "r", 1, 3));
    }
}
