"""Data: choose the sample, upload a zip, or pick a server folder; see what is in it."""

from pathlib import Path

import streamlit as st

from app_pages import access, sources, wording

st.title("Data")
st.caption("Labelled images: one sub-folder per class (or train/ val/ test/ folders of class sub-folders).")

SOURCES = ["Sample set (handwritten digits)", "Upload a zip", "Server folder"]


def welcome() -> None:
    """What the app does and its flow, once per visitor, with a one-click start on the sample set."""
    from app_pages import state

    if state.get("welcomed"):
        return
    with st.container(border=True):
        st.markdown(
            "**Welcome to Transfer Studio.** Bring labelled images (one folder per class), and it fine-tunes "
            "a pretrained image model on them in the background, shows how well it does, helps you fix "
            "mislabelled images, and exports the model for servers, phones and browsers.\n\n"
            "The flow: **Data** -> **Augment** -> **Train** -> **Runs** -> **Evaluate** -> **Export** -> "
            "**Try**. Everything you choose is kept: switching pages or reloading loses nothing."
        )
        go, hide = st.columns([2, 3])  # wide enough for the whole label on a laptop screen
        if go.button("Start with the sample digits", type="primary", icon=":material/rocket_launch:", width="content"):
            state.put("welcomed", True)
            sources.set_source("sample:digits")
            st.switch_page("app_pages/train.py")
        if hide.button("Hide this", key="welcome-hide"):
            state.put("welcomed", True)
            st.rerun()


def skipped_table(skipped: list[dict]) -> None:
    """The skipped files and why, names as wording.readable shows them (a DataFrame cannot hold a non-UTF-8 one)."""
    import pandas as pd

    st.dataframe(
        pd.DataFrame([{k: wording.readable(s[k]) for k in ("path", "reason")} for s in skipped]),
        hide_index=True,
        width="stretch",
    )


welcome()
sources.source_note()
current = sources.source()  # what this visitor already chose: coming back to this page must not reset it
kind = 0 if current.startswith("sample:") else 1 if current.endswith(".zip") else 2
choice = st.radio("Source", SOURCES, index=kind, horizontal=True)

# Imported after the first widgets are drawn: on a cold start the page is usable while these load.
import pandas as pd  # noqa: E402

from app_pages import loop, uploads  # noqa: E402
from pipeline import data  # noqa: E402
from pipeline.data import revision  # noqa: E402
from pipeline.host.exitcodes import UserError  # noqa: E402

pending = None  # a zip just uploaded: the source once it unpacks and holds images, else refused (and removed)
try:
    if choice.startswith("Sample"):
        sources.set_source("sample:digits")
    elif choice == "Upload a zip":
        # Streamed to disk as it arrives (app_pages/uploads.py), never whole in the server's memory
        upload = uploads.file_input("Zip of class folders", "uploads", [".zip"], key="dataset-zip")
        if upload is not None:
            import zipfile

            if not zipfile.is_zipfile(upload.path):  # a .zip name on something else: say so in the user's terms
                uploads.refuse(
                    upload,
                    f"{upload.name} is not a zip archive (its contents are not a zip, whatever "
                    "the name says). Zip the folder of class folders and upload that .zip.",
                )
                st.stop()
            pending = upload
        elif kind == 1:
            st.caption(f"Using {wording.plain(Path(current).name)}, uploaded before. Upload another zip to replace it.")
        else:
            st.info("Upload a .zip with one folder per class (or train/ val/ test/ folders of class folders).")
            st.stop()
    else:
        root = sources.data_root()
        every = sorted(str(p.relative_to(root)) for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        folders = [f for f in every if wording.readable(f) == f]  # a name that is not UTF-8 cannot be a job's source
        if len(folders) < len(every):
            st.caption(
                wording.plain(
                    "Not offered (their names are not UTF-8 text; rename them): "
                    + ", ".join(wording.readable(f) for f in every if f not in folders)
                )
            )
        if not folders:
            wording.info(f"No folders under {root}. Put datasets there, or set TRANSFER_STUDIO_DATA_ROOT.")
            st.stop()
        else:
            # Only the folders listed here can be picked; a symlink among them was put there by whoever runs
            # the server (a shared dataset mounted elsewhere), so it is followed.
            chosen = next((f for f in folders if str((root / f).resolve()) == current), None)
            picked = st.selectbox(f"Folder under {root}", folders, index=folders.index(chosen) if chosen else 0)
            sources.set_source(str((root / picked).resolve()))

    src = pending.path if pending else sources.source()
    folder, scanned = sources.resolve_and_scan(src)  # progress bars: unpacking, then decoding every image
    rev = revision.Revision(folder)
    report = revision.apply(data.ScanReport.from_dict(scanned), rev.active()).to_dict()  # as training sees it
except UserError as exc:  # DataError, or a full disk (DiskFullError) while unpacking or writing the sample
    if pending:  # a zip that cannot be unpacked: said with the name the user gave it, and removed
        uploads.refuse(pending, sources.user_words(exc, pending.path).replace(Path(pending.path).name, pending.name))
    else:
        wording.error(sources.user_words(exc, sources.source()))
    st.stop()

counts = {c: sum(v.values()) for c, v in report["counts"].items()}
total = sum(counts.values())
if total == 0:
    name = pending.name if pending else Path(src).name if not data.is_sample(src) else src
    message = (
        f"{name} holds no images Transfer Studio can read"
        + (f" ({len(report['skipped'])} file(s) skipped, listed below)" if report["skipped"] else "")
        + ". Put each class's images (JPEG, PNG, BMP, GIF or WebP) in its own folder and try again."
    )
    if pending:
        uploads.refuse(pending, message, extracted=folder)  # removed, with what was unpacked from it
    else:
        wording.error(message)
    if report["skipped"]:
        skipped_table(report["skipped"])
    st.stop()
if pending:
    sources.set_source(pending.path)  # usable: the source from now on (a reload, the other pages)
cols = st.columns(4)
cols[0].metric("Classes", len(report["classes"]))
cols[1].metric("Images", total)
cols[2].metric("Skipped files", len(report["skipped"]))
cols[3].metric("Layout", report["layout"])
for warning in report["warnings"]:
    wording.warning(warning)
if len(report["classes"]) < 2:
    st.error("A classifier needs at least 2 classes: put each class's images in its own sub-folder.")

st.subheader("Images per class")
st.bar_chart(pd.DataFrame({"images": counts}), horizontal=True)

st.subheader("Examples")
root = Path(report["root"])
by_class: dict[str, list[str]] = {}
for split_items in report["items"].values():
    for rel, cls in split_items:
        by_class.setdefault(cls, []).append(rel)
left, right = st.columns(2)
for i, cls in enumerate(report["classes"][:20]):
    strip = sources.thumbnail_strip(str(root), tuple(by_class.get(cls, [])[:6]))
    (left if i % 2 == 0 else right).image(
        strip, caption=wording.plain(f"{cls} ({wording.count(counts.get(cls, 0), 'image')})")
    )

PAGE = 24  # thumbnails a page of the class browser shows


def browse(root: Path, report: dict) -> None:
    """Every image of one class, a page at a time, with its per-split counts and a split filter."""
    classes = report["classes"]
    if not classes:
        return
    st.subheader("Browse a class")
    pick, where = st.columns([2, 3])
    cls = pick.selectbox("Class", classes, key="browse-class", format_func=wording.readable)
    per_split = {split: n for split, n in report["counts"].get(cls, {}).items() if n}
    options = ["all"] + list(per_split)
    split = where.radio(
        "Split",
        options,
        horizontal=True,
        key=f"browse-split-{cls}",
        format_func=lambda o: f"all ({sum(per_split.values())})" if o == "all" else f"{o} ({per_split[o]})",
    )
    files = [(sp, rel) for sp, items in report["items"].items() if split in ("all", sp) for rel, c in items if c == cls]
    if not files:
        st.caption("No images in this split.")
        return
    pages = (len(files) + PAGE - 1) // PAGE
    page = st.number_input(f"Page (of {pages})", 1, pages, 1, key=f"browse-page-{cls}-{split}") if pages > 1 else 1
    shown = files[(page - 1) * PAGE : page * PAGE]
    st.image(
        [sources.thumbnail(str(root), rel) for _, rel in shown],
        width=112,
        caption=[wording.plain(f"{sp}: {wording.readable(Path(rel).name)}") for sp, rel in shown],
    )
    st.caption(f"Images {(page - 1) * PAGE + 1}-{(page - 1) * PAGE + len(shown)} of {len(files)}.")


browse(root, report)

st.subheader("Image sizes")
st.dataframe(
    pd.DataFrame(
        {
            c: {
                "min": f"{s['min'][0]}x{s['min'][1]}",
                "median": f"{s['median'][0]}x{s['median'][1]}",
                "max": f"{s['max'][0]}x{s['max'][1]}",
            }
            for c, s in report["sizes"].items()
        }
    ).T
)

if report["skipped"]:
    st.subheader("Skipped files")
    skipped_table(report["skipped"])

st.subheader("Corrections")
loop.revision_summary(folder)
loop.corrections_list(folder, True, key="corrections-data")
st.caption(
    "Relabel or exclude images on the Evaluate page; add more examples here. Corrections are kept beside "
    "the dataset (its files are never changed) and every training run after them uses them."
)
add_left, add_right = st.columns(2)
with add_left:
    target = st.selectbox("Add images to class", report["classes"], key="add-class") if report["classes"] else None
    new_files = st.file_uploader(
        "Image files",
        type=["jpg", "jpeg", "png", "bmp", "gif", "webp"],
        accept_multiple_files=True,
        key=f"add-files-{st.session_state.get('added', 0)}",
    )
    force = st.checkbox(
        "Add copies anyway",
        key="add-force",
        help="An image whose bytes the dataset already holds "
        "(in validation or test it would leak into training) is refused unless this is ticked.",
    )
    if target and new_files and st.button(f"Add {len(new_files)} image(s) to {wording.plain(target)}", key="add-go"):
        loop.add_images(folder, scanned, target, new_files, force=force)
with add_right:  # the camera starts (and the browser asks for it) only when asked for, not on every visit
    if st.toggle("Take photos with the camera", key="add-camera"):
        shot = st.camera_input("Photo", key=f"camera-{st.session_state.get('added', 0)}")
        if target and shot is not None and st.button(f"Add the photo to {wording.plain(target)}", key="add-shot"):
            loop.add_images(folder, scanned, target, [shot], force=force)
loop.undo_button(folder, key="undo-data")

run_job = loop.latest_finished_run(src)
if run_job is not None:
    loop.label_issues_panel(
        run_job.run_dir, folder, report["classes"], access.can_control(run_job), key=f"data-issues-{run_job.id}"
    )
st.page_link("app_pages/augment.py", label="Next: preview augmentation", icon=":material/arrow_forward:")
