//! tcx attachment with pinned links: a link pinned at `<pin_dir>/links/<program>-<iface>`
//! outlives the agent, so the datapath forwards while the agent is down, and a restarted (or
//! upgraded) agent takes the pinned link over instead of attaching a second program (see
//! `takeover`).
use std::path::PathBuf;

use aya::programs::{
    links::{LinkOrder, PinnedLink},
    tc::{SchedClassifier, TcAttachOptions, TcAttachType},
};

use crate::{Datapath, Error, Result};

/// What `attach_ingress` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attachment {
    /// A new link was created and pinned.
    Attached,
    /// A pinned link of an earlier agent was there: it now runs this load's program.
    Replaced,
    /// A pinned link of an earlier agent was there, its program deciding with maps this load
    /// does not share (an older version, or a recreated map): it is replaced by
    /// `Datapath::finish_takeover`, after the maps are filled.
    Deferred,
}

impl Datapath {
    fn link_pin(&self, iface: &str, program: &str) -> PathBuf {
        // bpffs refuses names with '.', which interface names (VLANs) may have.
        self.pin_dir.join("links").join(format!("{program}-{}", iface.replace('.', "_")))
    }

    /// Attaches `program` to the tcx ingress of `iface` (in the caller's network namespace), or
    /// takes over the pinned link of an earlier agent when it is still attached there.
    pub fn attach_ingress(&mut self, iface: &str, program: &'static str) -> Result<Attachment> {
        self.attach(iface, program, TcAttachType::Ingress)
    }

    /// The same on the tcx egress of `iface`.
    pub fn attach_egress(&mut self, iface: &str, program: &'static str) -> Result<Attachment> {
        self.attach(iface, program, TcAttachType::Egress)
    }

    fn attach(&mut self, iface: &str, program: &'static str, dir: TcAttachType) -> Result<Attachment> {
        let pin = self.link_pin(iface, program);
        let name = pin.file_name().unwrap_or_default().to_string_lossy().into_owned();
        for existing in self.existing_pins(&name) {
            if program_names(iface, dir)?.iter().any(|p| p == program) {
                return self.take_over(existing, pin, program);
            }
            // The interface was re-created: the old link is defunct; drop its pin.
            remove_pin(&existing)?;
        }
        let prog = self.classifier(program)?;
        let attach_err = |source| Error::Attach { program, iface: iface.to_owned(), source: Box::new(source) };
        let id = prog
            .attach_with_options(iface, dir, TcAttachOptions::TcxOrder(LinkOrder::default()))
            .map_err(attach_err)?;
        crate::pin_link(prog.take_link(id).map_err(attach_err)?, &pin)?;
        Ok(Attachment::Attached)
    }

    /// Removes the pinned links of `program` on `iface`, this version's and older ones'
    /// (detaching them if the interface lives). Missing pins are not an error. Links are pinned
    /// per program name, so this serves both directions.
    pub fn detach(&mut self, iface: &str, program: &'static str) -> Result<()> {
        let pin = self.link_pin(iface, program);
        self.forget_pending(&pin);
        let name = pin.file_name().unwrap_or_default().to_string_lossy().into_owned();
        for existing in self.existing_pins(&name) {
            remove_pin(&existing)?;
        }
        Ok(())
    }

    /// Number of programs on the tcx ingress of `iface` (any owner).
    pub fn ingress_program_count(&self, iface: &str) -> Result<usize> {
        ingress_program_names(iface).map(|v| v.len())
    }
}

/// Names of the programs attached to the tcx ingress of `iface` in this network namespace.
pub fn ingress_program_names(iface: &str) -> Result<Vec<String>> {
    program_names(iface, TcAttachType::Ingress)
}

/// Names of the programs attached to the tcx egress of `iface` in this network namespace.
pub fn egress_program_names(iface: &str) -> Result<Vec<String>> {
    program_names(iface, TcAttachType::Egress)
}

/// Kernel ids of the programs on the tcx ingress of `iface` (a replaced program has a new id).
pub fn ingress_program_ids(iface: &str) -> Result<Vec<u32>> {
    Ok(query(iface, TcAttachType::Ingress)?.iter().map(|p| p.id()).collect())
}

fn program_names(iface: &str, dir: TcAttachType) -> Result<Vec<String>> {
    Ok(query(iface, dir)?.iter().map(|p| p.name_as_str().unwrap_or("?").to_owned()).collect())
}

fn query(iface: &str, dir: TcAttachType) -> Result<Vec<aya::programs::ProgramInfo>> {
    let (_, progs) = SchedClassifier::query_tcx(iface, dir).map_err(|source| Error::Attach {
        program: "query",
        iface: iface.to_owned(),
        source: Box::new(source),
    })?;
    Ok(progs)
}

fn remove_pin(pin: &std::path::Path) -> Result<()> {
    match PinnedLink::from_pin(pin) {
        Ok(link) => {
            link.unpin().map_err(|source| Error::Io { op: "unpinning", path: pin.to_owned(), source })?;
        }
        Err(_) => {
            std::fs::remove_file(pin).map_err(|source| Error::Io { op: "removing", path: pin.to_owned(), source })?;
        }
    }
    Ok(())
}
