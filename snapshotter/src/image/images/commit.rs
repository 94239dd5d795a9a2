//! Commits of a container's changes as a new image, and removal of images
//! with the layers no other image uses: both crash-safe intents settled by
//! [`Images::open`].

use super::*;

impl Images {
    /// Removes image `name` and the layer snapshots no other image uses.
    /// Refuses (InUse) while a snapshot other than an image layer (a
    /// container's root, a view) is a child of its top layer or of a layer
    /// that would be removed.
    pub fn remove(&self, sn: &dyn Snapshotter, name: &str) -> Result<()> {
        let _op = self.writer("remove image")?;
        let image = self.get(name)?;
        let (removable, _) = self.removable(&image.name)?;
        let all_layers = self.all_chain_ids()?;
        let mut guarded: HashSet<String> = removable.iter().cloned().collect();
        if let Some(top) = image.top_snapshot() {
            guarded.insert(top.to_string());
        }
        let mut blocker: Option<(String, String)> = None;
        sn.walk(&[], &mut |info| {
            if let Some(p) = &info.parent {
                if blocker.is_none() && guarded.contains(p) && !all_layers.contains(&info.name) {
                    blocker = Some((info.name.clone(), p.clone()));
                }
            }
            Ok(())
        })?;
        if let Some((child, parent)) = blocker {
            return Err(Error::new(ErrorKind::InUse, "remove image")
                .key(&image.name)
                .detail(format!(
                    "snapshot {child:?} (a container's root or a view) is a child of its layer {parent}; remove that container or snapshot first"
                )));
        }
        self.db()
            .execute(
                "UPDATE images SET state = 'removing' WHERE name = ?1",
                [&image.name],
            )
            .map_err(store_err("remove image"))?;
        self.finish_remove(sn, &image.name)
    }

    /// Chain ids of image `name` that no other image uses, top first, and
    /// all of its chain ids.
    pub(super) fn removable(&self, name: &str) -> Result<(Vec<String>, Vec<String>)> {
        let db = self.db();
        let mut st = db
            .prepare(
                "SELECT chain_id, NOT EXISTS (SELECT 1 FROM image_layers o
                     WHERE o.chain_id = l.chain_id AND o.image != l.image)
                 FROM image_layers l WHERE image = ?1 ORDER BY idx DESC",
            )
            .map_err(store_err("remove image"))?;
        let rows: Vec<(String, bool)> = st
            .query_map([name], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(store_err("remove image"))?
            .collect::<rusqlite::Result<_>>()
            .map_err(store_err("remove image"))?;
        let all = rows.iter().map(|r| r.0.clone()).collect();
        Ok((rows.into_iter().filter(|r| r.1).map(|r| r.0).collect(), all))
    }

    pub(super) fn all_chain_ids(&self) -> Result<HashSet<String>> {
        let db = self.db();
        let mut st = db
            .prepare("SELECT DISTINCT chain_id FROM image_layers")
            .map_err(store_err("image"))?;
        let rows = st.query_map([], |r| r.get(0)).map_err(store_err("image"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(store_err("image"))
    }

    pub(super) fn finish_remove(&self, sn: &dyn Snapshotter, name: &str) -> Result<()> {
        let (removable, _) = self.removable(name)?;
        for chain in removable {
            remove_if_present(sn, &chain).map_err(|e| {
                if e.kind() == ErrorKind::HasChildren {
                    Error::new(ErrorKind::InUse, "remove image")
                        .key(name)
                        .detail(format!(
                            "layer {chain} has a child snapshot; remove it and run `thinbox image rm {name}` again"
                        ))
                        .source(e)
                } else {
                    e
                }
            })?;
        }
        self.db()
            .execute("DELETE FROM images WHERE name = ?1", [name])
            .map_err(store_err("remove image"))?;
        Ok(())
    }

    /// Commits the container snapshot `key` (active, unmounted, prepared
    /// on `base`'s top layer) as a new layer and records image `new_name`:
    /// `base`'s config and layers plus the new one, whose diff id is the
    /// digest of the uncompressed diff of `key` against its parent.
    pub fn commit_container(
        &self,
        sn: &dyn Snapshotter,
        base: &Image,
        key: &Key,
        new_name: &str,
    ) -> Result<Image> {
        let _op = self.writer("commit")?;
        validate_name(new_name)?;
        if self.name_used(new_name)? {
            return Err(name_taken(new_name));
        }
        let top = base.layers.last().ok_or_else(|| {
            Error::new(ErrorKind::InvalidArgument, "commit")
                .key(&base.name)
                .detail("the image has no layers")
        })?;
        let info = sn.stat(key)?;
        if info.kind != Kind::Active || info.parent.as_deref() != Some(&top.chain_id.to_string()) {
            return Err(Error::new(ErrorKind::InvalidArgument, "commit")
                .key(key)
                .detail(format!(
                    "not an active snapshot on image {}'s top layer {}",
                    base.name, top.chain_id
                )));
        }
        let intent = self.new_intent("commit", None)?;
        let result = self.commit_inner(sn, base, key, new_name, intent, top.chain_id);
        if result.is_err() {
            // Settled as after a crash: an image whose layer got committed
            // is recorded (the container's changes are not lost), else the
            // intent is dropped and the container's snapshot is untouched.
            let payload: Option<String> = self
                .db()
                .query_row(
                    "SELECT payload FROM image_intents WHERE id = ?1",
                    [intent],
                    |r| r.get(0),
                )
                .optional()
                .map_err(store_err("commit"))?
                .flatten();
            if let Err(e) = self.settle_commit(sn, intent, payload.as_deref()) {
                tracing::warn!("cannot settle commit {intent}: {e}; reopening retries");
            }
        }
        result
    }

    pub(super) fn commit_inner(
        &self,
        sn: &dyn Snapshotter,
        base: &Image,
        key: &Key,
        new_name: &str,
        intent: i64,
        parent_chain: Digest,
    ) -> Result<Image> {
        let scratch = self.scratch(intent);
        fs::create_dir_all(&scratch).map_err(|e| Error::io("commit", &scratch, e))?;
        let mut hw = HashingWriter::new(io::sink());
        layer::diff_snapshot(sn, key, &scratch, &mut hw)?;
        let (diff_id, size, _) = hw.finish();
        clear_scratch(&scratch);
        let chain = chain_id(&parent_chain, &diff_id);
        let mut layers = base.layers.clone();
        layers.push(Layer {
            digest: diff_id,
            diff_id,
            chain_id: chain,
            size,
        });
        let sizes: Vec<(Digest, u64)> = layers.iter().map(|l| (l.diff_id, l.size)).collect();
        let image = Image {
            name: new_name.to_owned(),
            manifest: uncompressed_manifest_digest(&base.config, &sizes),
            config: base.config.clone(),
            layers,
            created: now_secs(),
        };
        let payload = serde_json::to_string(&image)
            .map_err(|e| Error::new(ErrorKind::Store, "commit").source(e))?;
        self.db()
            .execute(
                "UPDATE image_intents SET payload = ?1 WHERE id = ?2",
                params![payload, intent],
            )
            .map_err(store_err("commit"))?;
        self.record_snapshot(intent, 0, key.as_str(), &chain.to_string())?;
        let chain_name = Name::new(chain.to_string())?;
        match exists(sn, chain_name.as_str())? {
            // The same change was committed before: the layer is shared.
            Some(Kind::Committed) => sn.remove(key)?,
            Some(_) => {
                return Err(Error::new(ErrorKind::AlreadyExists, "commit")
                    .key(&chain_name)
                    .detail("a snapshot that is not committed has the new layer's chain id"))
            }
            None => sn.commit(&chain_name, key, &Labels::new())?,
        }
        self.fault(FaultPoint::ContainerCommitted)?;
        let mut db = self.db();
        let tx = db.transaction().map_err(store_err("commit"))?;
        insert_image(&tx, &image)?;
        tx.execute("DELETE FROM image_intents WHERE id = ?1", [intent])
            .map_err(store_err("commit"))?;
        tx.commit().map_err(store_err("commit"))?;
        Ok(image)
    }
}
