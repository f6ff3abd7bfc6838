"""Write the five notebooks of the series from the cell texts in this file.

The notebooks are generated rather than edited in Jupyter so that they stay clean JSON (no
outputs, no execution counts, stable cell ids) and so that the cells every notebook shares
(title badges, setup, settings) are written once. Edit the texts here, then run::

    python notebooks/make_notebooks.py

``tests/test_notebooks.py`` fails when a stored notebook differs from what this script writes.
"""

from __future__ import annotations

import os
import sys
import tempfile
import tomllib
from pathlib import Path
from textwrap import dedent

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
PYPROJECT = HERE.parent / "pyproject.toml"

KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}
COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
KAGGLE_BADGE = "https://kaggle.com/static/images/open-in-kaggle.svg"


def repository_url() -> str:
    """``[project.urls] Repository`` of ``pyproject.toml``, without a trailing slash."""
    with PYPROJECT.open("rb") as handle:
        return tomllib.load(handle)["project"]["urls"]["Repository"].rstrip("/")


def badge_urls(file_name: str, repository: str) -> tuple[str, str]:
    """The "Open in Colab" and "Open in Kaggle" links of one notebook of ``repository``."""
    github_path = repository.removeprefix("https://github.com/")
    colab = (
        f"https://colab.research.google.com/github/{github_path}/blob/main/notebooks/{file_name}"
    )
    kaggle = (
        "https://kaggle.com/kernels/welcome?src="
        f"https://github.com/{github_path}/blob/main/notebooks/{file_name}"
    )
    return colab, kaggle


def md(text: str) -> nbformat.NotebookNode:
    return new_markdown_cell(dedent(text).strip())


def code(text: str) -> nbformat.NotebookNode:
    return new_code_cell(dedent(text).strip())


def title_cell(file_name: str, title: str, learn: str, repository: str) -> nbformat.NotebookNode:
    """Title, one paragraph on what the notebook teaches, and the two badges."""
    colab, kaggle = badge_urls(file_name, repository)
    return new_markdown_cell(
        f"# {title}\n\n{dedent(learn).strip()}\n\n"
        f"[![Open In Colab]({COLAB_BADGE})]({colab})\n"
        f"[![Open In Kaggle]({KAGGLE_BADGE})]({kaggle})"
    )


def setup_cell(repository: str) -> nbformat.NotebookNode:
    """Install the project on Colab/Kaggle when ``helpers`` is missing; locally do nothing."""
    return code(
        f'''
        # Setup environment. On Colab or Kaggle: install this project's `helpers` package from
        # GitHub (once per session). Locally, after `pip install -e .`, this cell does nothing.
        import importlib.util
        import os
        import socket
        import subprocess
        import sys

        # Idle PyTorch threads sleep instead of spinning: on a small or shared CPU, spinning threads
        # take turns away from the working ones and slow training several-fold (before `import torch`).
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

        REPOSITORY = "{repository}"
        on_colab = os.path.isdir("/content")
        on_kaggle = "KAGGLE_KERNEL_RUN_TYPE" in os.environ
        if importlib.util.find_spec("helpers") is None and (on_colab or on_kaggle):
            try:
                socket.create_connection(("github.com", 443), timeout=5).close()
            except OSError:
                raise RuntimeError(
                    "No internet, so the project cannot be installed. On Kaggle: open the "
                    "notebook's Settings panel > Internet > On (needs a phone-verified account), "
                    "then run this cell again."
                ) from None
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"git+{{REPOSITORY}}"], check=True)
            importlib.invalidate_caches()
        elif importlib.util.find_spec("helpers") is None and os.path.isdir("../helpers"):
            sys.path.insert(0, os.path.abspath(".."))  # a checkout that was not pip-installed
        '''
    )


def settings_cell() -> nbformat.NotebookNode:
    """The recipe and the dataset, and a short report of both."""
    return code(
        """
        config = config_from_env()  # the article's recipe; PNEUMONIA_QUICK=1 shrinks it
        location = find_dataset()  # PNEUMONIA_DATA_DIR, data/, Kaggle, or the synthetic demo
        show_setup(config, location)
        """
    )


def notebook(
    file_name: str, title: str, learn: str, imports: str, cells: list, repository: str
) -> nbformat.NotebookNode:
    """Title, setup, imports and settings cells, then ``cells``; deterministic cell ids."""
    nb = new_notebook()
    nb.metadata = {"kernelspec": KERNELSPEC, "language_info": {"name": "python"}}
    nb.cells = [
        title_cell(file_name, title, learn, repository),
        setup_cell(repository),
        code(imports),
        settings_cell(),
        *cells,
    ]
    stem = file_name.split("_")[0]
    for index, cell in enumerate(nb.cells):
        cell["id"] = f"nb{stem}-{index:02d}"
    return nb


# --- 01 -----------------------------------------------------------------------------------

NB01 = dict(
    file_name="01_dataset_eda.ipynb",
    title="01 · The dataset: what is in the X-ray folders?",
    learn="""
    Before training anything, look at the data. In this notebook you count the images per
    split and class, see how unbalanced the two classes are, find out that most patients
    contribute several X-rays (and why that decides how we split the data), and measure the
    original image sizes to choose the input size of the network. Everything here comes from
    file names and image headers, so it takes seconds even on the full dataset.
    """,
    imports="""
    import pandas as pd

    from helpers.config import config_from_env
    from helpers.data import find_dataset, scan
    from helpers.notebooks import show_setup
    from helpers.plots import (
        figures_dir,
        plot_class_balance,
        plot_images_per_patient,
        plot_pneumonia_kinds,
        plot_size_histograms,
        plot_split_counts,
    )
    """,
    cells=[
        md(
            """
            `find_dataset()` looks for the X-rays in this order: the folder in
            `PNEUMONIA_DATA_DIR`, `data/chest_xray` in the project, a dataset attached to a Kaggle
            notebook, and a `kagglehub` download (needs a Kaggle account). When all of these fail
            it generates a small **synthetic demo dataset**, so that every cell still runs. The
            demo images are drawings that imitate the real dataset's layout and proportions: use
            them to learn the mechanics, never to judge results. `data/README.md` explains how
            to get the real dataset, *Chest X-Ray Images (Pneumonia)* (Kermany et al., 2018).

            ## 1. Scan the folders

            The Kaggle release is organised as `chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/`.
            `scan()` walks these folders and builds a table with one row per image. It opens each
            file only far enough to read its **header** (width, height, pixel mode): Pillow reads
            the header when a file is opened and decodes the pixels only when asked to, so
            scanning thousands of X-rays takes seconds. Files that cannot be used (empty,
            truncated, not an image) are not silently dropped: they are listed in
            `scanned.problems` with the reason.
            """
        ),
        code(
            """
            scanned = scan(location.root)
            images = scanned.images
            print(f"{len(images):,} usable images, {len(scanned.problems)} problem files")
            images.head()
            """
        ),
        md(
            """
            The file name gives the `patient` and, for pneumonia, its `kind`; the header gives
            `width`, `height` and `mode`. Counting images per split and class:
            """
        ),
        code("scanned.counts()"),
        code('plot_split_counts(images, save=figures_dir() / "01_split_counts.png")'),
        md(
            """
            On the real dataset three things stand out, and each shapes a later decision:

            * the official `val` folder holds only **16 images** (8 per class): far too few to
              steer training with (notebook 02 builds a better validation set);
            * `train` is dominated by PNEUMONIA (next section);
            * `test` (624 images, 234 NORMAL and 390 PNEUMONIA) has a larger share of NORMAL
              images than `train`: it is not distributed like the training data (notebook 05
              comes back to this).

            ## 2. Class imbalance (the article's Fig. 2)
            """
        ),
        code(
            'plot_class_balance(images, split="train", save=figures_dir() / "01_class_balance.png")'
        ),
        md(
            """
            In the real training split there are about three PNEUMONIA images for each NORMAL one
            (3,875 vs 1,341). That has two consequences. First, **accuracy flatters**: a "model"
            that answers PNEUMONIA for every image, without looking at it, is already right most
            of the time. Second, a network trained on these counts gains more by getting
            PNEUMONIA right than NORMAL, and drifts towards over-calling pneumonia. So we report
            F1 and per-class recall rather than accuracy alone, and notebook 04 weights the loss
            so that both classes count equally.
            """
        ),
        code(
            """
            train_rows = images[images["split"] == "train"]
            always_pneumonia = (train_rows["label"] == "PNEUMONIA").mean()
            print(f"accuracy on train of always answering PNEUMONIA: {always_pneumonia:.1%}")
            """
        ),
        md(
            """
            ## 3. Bacterial and viral pneumonia

            PNEUMONIA file names also say whether the infection was bacterial or viral
            (`person1_bacteria_1.jpeg`, `person1_virus_6.jpeg`). We only separate NORMAL from
            PNEUMONIA, but the mix helps to read the errors later: a bacterial pneumonia often
            shows as a dense, well-defined white patch, while a viral one tends to be fainter and
            spread out, closer to a normal lung, so it is the harder kind to detect.
            """
        ),
        code('pd.crosstab(images["split"], images["kind"])'),
        code('plot_pneumonia_kinds(images, save=figures_dir() / "01_pneumonia_kinds.png")'),
        md(
            """
            ## 4. Several images per patient

            The file names carry a patient id too (`person123_...` for pneumonia,
            `IM-0115-...` for normal X-rays), and many patients have more than one image.
            """
        ),
        code(
            """
            per_patient = images.groupby("patient").size()
            print(
                f"{per_patient.size:,} patients for {len(images):,} images; "
                f"{(per_patient > 1).mean():.0%} of the patients have more than one image "
                f"(at most {per_patient.max()})"
            )
            """
        ),
        code('plot_images_per_patient(images, save=figures_dir() / "01_images_per_patient.png")'),
        md(
            """
            **Why this matters.** Two X-rays of the same person share the anatomy, the machine,
            the positioning and usually the illness. If one of them is used for training and the
            other for validation, the network can score well by *recognising the person* instead
            of the pneumonia, and the validation score promises more than the model delivers on
            new patients. So when notebook 02 carves a validation set out of the training images,
            it moves **whole patients**, never single images.

            ## 5. Image sizes (the article's Fig. 3)

            A network takes inputs of one fixed size, so we need to know how large the originals
            are. These widths and heights were read from the file headers during the scan: no
            image was decoded to draw this figure.
            """
        ),
        code(
            'plot_size_histograms(images, split="train", save=figures_dir() / "01_image_sizes.png")'
        ),
        code(
            """
            sizes = train_rows[["width", "height"]].assign(aspect=train_rows["width"] / train_rows["height"])
            sizes.groupby(train_rows["label"]).median().round(2)
            """
        ),
        md(
            """
            On the real X-rays the sizes vary a lot (from a few hundred to almost 3,000 pixels a
            side), most images are wider than tall, and **NORMAL images are clearly larger than
            PNEUMONIA ones**. That last point is a warning: if images kept their size, "large
            image" would be a shortcut to the answer NORMAL that has nothing to do with the
            lungs. Resizing every image to one size removes that cue.

            ## 6. Pixel modes

            A JPEG stores either one grey channel (mode `L`) or three colour channels (`RGB`).
            X-rays have no colour: an `RGB` X-ray simply holds the same grey picture three times.
            """
        ),
        code('pd.crosstab(images["split"], images["mode"])'),
        md(
            """
            So we read every image as **one grey channel**, which loses nothing, and copy it to
            three channels only right before the network (notebook 02 explains why).

            ## Conclusion: 256 × 256

            The article resizes every image to 256 × 256, and so do we. The size is:

            * **smaller than almost every original**, so nearly no image has to be blown up, while
              still large enough to keep the texture of the lung fields, where pneumonia shows;
            * **divisible by 32**. MobileNetV3 halves the resolution five times with stride-2
              convolutions (its first convolution and four of its blocks), and 2⁵ = 32. A 256-pixel
              side halves exactly at every stage and ends as an **8 × 8** grid of features
              (256 / 32) that the classifier averages; with a side not divisible by 32, some stage
              would have to round an odd size and the grid would no longer line up with the image.

            Images are squashed to the square (the aspect ratio is not kept), as in the article;
            notebook 02 shows what that looks like. In quick mode (`PNEUMONIA_QUICK=1`) the same
            code uses 64 × 64 images, so that everything runs in seconds.
            """
        ),
        code(
            """
            size = config.image_size
            assert size % 32 == 0, "MobileNetV3 needs a side divisible by 32"
            print("side after each stride-2 stage:", [size // 2**k for k in range(6)])
            print(f"final feature map: {size // 32} x {size // 32}")
            """
        ),
        md("Next: **02 · Preprocessing**, from these files to batches the network can use."),
    ],
)

# --- 02 -----------------------------------------------------------------------------------

NB02 = dict(
    file_name="02_preprocessing.ipynb",
    title="02 · Preprocessing: from JPEG files to network-ready batches",
    learn="""
    A pretrained network expects its inputs in a precise form. In this notebook you turn each
    X-ray into a 256 × 256 grey square, see why it is then copied to three channels and
    normalised with ImageNet statistics, look at what the article's data augmentation does to
    an image, carve a validation set out of the training images without splitting any
    patient, and build the decode-once image cache that makes training on a CPU practical.
    """,
    imports="""
    import time

    import numpy as np
    import pandas as pd
    import torch
    from PIL import Image

    from helpers.config import Config, config_from_env, outputs_dir
    from helpers.data import find_dataset, make_splits, scan
    from helpers.notebooks import show_setup
    from helpers.plots import figures_dir, plot_image_grid, plot_split_counts
    from helpers.preprocess import (
        apply_augmentation,
        article_augmentation,
        augment_params,
        augment_policy,
        build_cache,
        denormalize,
        eval_transform,
        load_gray,
        normalize_batch,
        train_transform,
    )
    """,
    cells=[
        md(
            """
            ## 1. Resize to 256 × 256 (the article's Fig. 4)

            Every image is read as one grey channel and resized to a square with bicubic
            interpolation. Like the article, we **squash** rather than crop: cropping a wide image
            to a square would cut off the sides of the lungs, where pneumonia can be, while
            squashing keeps the whole chest and distorts all images in the same mild way.
            `load_gray(path, size)` does exactly this and returns a `uint8` array.
            """
        ),
        code(
            """
            images = scan(location.root).images
            figure_size = Config().image_size  # the article's 256, even in quick mode: only 10 images
            sample = images[images["split"] == "train"].groupby("label").sample(5, random_state=config.seed)
            pictures = [load_gray(path, figure_size) for path in sample["path"]]
            titles = [f"{row.label}\\n{row.width}x{row.height}" for row in sample.itertuples()]
            print(pictures[0].shape, pictures[0].dtype)
            """
        ),
        code(
            """
            plot_image_grid(
                pictures,
                titles,
                ncols=5,
                save=figures_dir() / "02_resized_samples.png",
                suptitle=f"Training images resized to {figure_size}x{figure_size} (original size in the title)",
            )
            """
        ),
        md(
            """
            Air lets X-rays through, so healthy lungs look dark. In pneumonia, parts of the lungs
            fill with fluid and show as brighter, cloudy areas (*opacities*): that is the signal
            the network has to find.

            ## 2. One grey channel becomes three normalised channels

            The backbone (notebook 03) was pretrained on ImageNet: colour photographs with three
            channels, each standardised with ImageNet's mean and standard deviation. Its first
            convolution has filters for three channels, and all of its layers were tuned to
            inputs on that scale. So we copy the grey image into the three channels and
            standardise each one with ImageNet's statistics: the X-rays then arrive in the form
            the pretrained filters know. Feeding raw 0-255 values instead would put every
            activation far outside the range the weights were trained for.
            """
        ),
        code(
            """
            one = pictures[0]
            x = normalize_batch(torch.from_numpy(one)[None, None])  # uint8 (1, 1, S, S) -> float (1, 3, S, S)
            print(tuple(x.shape), x.dtype)
            stats = {"mean": x[0].mean(dim=(1, 2)), "std": x[0].std(dim=(1, 2))}
            pd.DataFrame(stats, index=["R", "G", "B"]).round(3)
            """
        ),
        md(
            """
            The three channels hold the same picture; their numbers differ only because each
            channel is standardised with its own ImageNet mean and standard deviation.
            `denormalize` undoes the normalisation, for display:
            """
        ),
        code(
            """
            restored = denormalize(x)[0, 0].numpy() * 255
            print(f"largest difference after the round trip: {np.abs(restored - one).max():.4f} grey levels")
            """
        ),
        md(
            """
            ## 3. Data augmentation (the article's recipe)

            During training, each image gets **one** of three random changes, picked with equal
            chance: a colour jitter (brightness and contrast changed by up to 20 %), a small
            affine move (rotation up to 10°, shift up to 10 % of the side, shear up to 2°), or a
            horizontal flip. X-rays from different machines and patients differ in exposure and
            positioning; showing the network slightly altered copies teaches it that such
            differences do not change the answer, so it memorises the training images less. The
            changes are deliberately mild: a strong rotation or a crop could produce a chest
            that looks like no real X-ray, or cut away the very opacity that makes the label.
            """
        ),
        code("print(article_augmentation())"),
        md(
            """
            That is the per-image torchvision version. Training applies the same transformations,
            with the same parameter ranges, to a whole batch at once with tensor operations
            (`augment_batch`), which is much faster on a CPU. Here are eleven augmented copies of
            one image, each titled with the change it got:
            """
        ),
        code(
            """
            generator = torch.Generator().manual_seed(config.seed)
            copies = torch.from_numpy(one).float().div(255).expand(11, 1, -1, -1).contiguous()
            params = augment_params(len(copies), figure_size, figure_size, generator)
            augmented = apply_augmentation(copies, params)
            names = ["colour jitter", "affine", "flip"]
            titles = ["original"] + [names[choice] for choice in params["choice"].tolist()]
            plot_image_grid(
                [one] + [image[0].numpy() for image in augmented],
                titles,
                ncols=4,
                save=figures_dir() / "02_augmentation.png",
            )
            """
        ),
        md(
            """
            **This project's default goes further.** `config.augment` is `"robust"` unless you
            choose otherwise: after the article's random choice, every training image also gets a
            wider random change of exposure (a gamma curve), contrast, brightness and zoom. The
            reason is the official test split, which was acquired differently from the training
            images: models trained with the article's mild augmentation over-call pneumonia on
            it (notebook 05). Varying what differs between X-ray machines and protocols asks the
            model not to rely on it. `config.replace(augment="article")` restores the article's
            exact recipe.
            """
        ),
        code(
            """
            print("augmentation policy of this config:", config.augment)
            robust = augment_policy(copies, torch.Generator().manual_seed(config.seed), "robust")
            plot_image_grid(
                [one] + [image[0].numpy() for image in robust],
                ["original"] + ["article + robust"] * len(robust),
                ncols=4,
                save=figures_dir() / "02_augmentation_robust.png",
            )
            """
        ),
        md(
            """
            **Only training images are augmented.** The original notebook used one transform,
            random augmentation included, for the training, validation *and* test images, so its
            validation and test scores were measured on randomly altered images and changed from
            one evaluation to the next. This project fixes that: evaluation transforms are
            deterministic. Applying each transform twice to the same image shows the difference:
            """
        ),
        code(
            """
            with Image.open(sample["path"].iloc[0]) as pil:
                pil.load()
            torch.manual_seed(config.seed)
            augment, evaluate = train_transform(config.image_size), eval_transform(config.image_size)
            same_train = torch.equal(augment(pil), augment(pil))
            same_eval = torch.equal(evaluate(pil), evaluate(pil))
            print("training transform, two calls give the same tensor:  ", same_train)
            print("evaluation transform, two calls give the same tensor:", same_eval)
            """
        ),
        md(
            """
            ## 4. A validation set grouped by patient

            Early stopping (notebook 04) decides when to stop training by watching the loss on a
            validation set, so that set must be large enough for its loss to mean something.
            The official `val` folder has 16 images: one image more or less classified correctly
            moves its accuracy by more than 6 points, and its loss jumps from epoch to epoch by
            chance, so "stop when the validation loss stops improving" would stop on noise. (The
            original notebook used it anyway.)

            Instead, `make_splits` pools the official train and val images and sets aside 5 % of
            them (`config.val_split`) as validation, moving **whole patients** (notebook 01
            explained why) and keeping the class proportions. It is seeded, so the split is the
            same every time. The official `test` folder stays untouched for the final evaluation.
            """
        ),
        code(
            """
            print(f"official val folder: {(images['split'] == 'val').sum()} images")
            splits = make_splits(images, config)
            pd.DataFrame(
                {
                    name: {
                        "images": len(table),
                        "patients": table["patient"].nunique(),
                        "NORMAL": (table["label"] == "NORMAL").sum(),
                        "PNEUMONIA": (table["label"] == "PNEUMONIA").sum(),
                    }
                    for name, table in splits.items()
                }
            ).T
            """
        ),
        code(
            """
            shared = set(splits["train"]["patient"]) & set(splits["val"]["patient"])
            assert not shared, f"{len(shared)} patients are on both sides of the split"
            print("patients in both the training and the validation split:", len(shared))
            """
        ),
        code(
            """
            used = pd.concat([table.assign(split=name) for name, table in splits.items()])
            plot_split_counts(used, save=figures_dir() / "02_training_splits.png")
            """
        ),
        md(
            """
            In quick mode the training split is capped at about 400 images (whole patients) and
            a fifth goes to validation, so that the next notebooks run in seconds; the full recipe
            uses every image and 5 %.

            ## 5. Decode once: the image cache

            A full-resolution chest X-ray is a JPEG of one to several megapixels. Decoding and
            resizing it takes milliseconds, and a plain PyTorch `Dataset` does it again for every
            image in every epoch: on a CPU this decoding, not the network, is what makes
            training slow. Yet once resized, the images never change. So `build_cache` decodes
            each image **once** and stores all of them in one `uint8` array `(N, S, S)` on disk;
            training then reads batches straight from it (memory-mapped: the operating system
            loads the parts in use). Augmentation still happens on the fly, on these small
            arrays. Images that fail to decode are recorded in the cache's index, not dropped
            silently. The cache is named after a fingerprint of the files and the size, so it is
            rebuilt when either changes and reused otherwise: notebook 04 will find this very
            cache and decode nothing.
            """
        ),
        code(
            """
            paths = pd.concat([splits[name]["path"] for name in ("train", "val", "test")]).tolist()
            cache = build_cache(paths, config.image_size, outputs_dir() / "cache")
            original_mb = images.set_index("path").loc[paths, "bytes"].sum() / 1e6
            print(cache)
            print(
                f"array {cache.array.shape} {cache.array.dtype}: {cache.path.stat().st_size / 1e6:.1f} MB "
                f"on disk (the original files: {original_mb:.1f} MB)"
            )
            """
        ),
        md("How much faster is reading a batch from the cache than decoding the same files?"),
        code(
            """
            batch_paths = paths[:32]
            start = time.perf_counter()
            decoded = np.stack([load_gray(path, config.image_size) for path in batch_paths])
            decode_s = time.perf_counter() - start
            start = time.perf_counter()
            cached = cache.batch([cache.index_of(path) for path in batch_paths])
            cache_s = time.perf_counter() - start
            assert np.array_equal(decoded, cached[:, 0].numpy())  # the same pixels either way
            print(
                f"decoding {len(batch_paths)} files: {decode_s * 1000:.1f} ms; reading them from the "
                f"cache: {cache_s * 1000:.2f} ms ({decode_s / cache_s:.0f}x faster)"
            )
            """
        ),
        md(
            """
            One batch is a rough measurement, and the demo images are small drawings that decode
            quickly: on real full-resolution X-rays the gap is much wider. To measure it properly
            on your data (several repetitions, images per second for a plain per-image pipeline
            against the cache), run in a terminal:

            ```bash
            python -m helpers bench loader --data <dataset folder>     # add --quick for a short run
            ```

            Next: **03 · The model**.
            """
        ),
    ],
)

# --- 03 -----------------------------------------------------------------------------------

NB03 = dict(
    file_name="03_model.ipynb",
    title="03 · The model: MobileNetV3-Small, mostly frozen, with a new head",
    learn="""
    Transfer learning reuses a network trained on millions of photos for a task with a few
    thousand images. In this notebook you build the article's model from an ImageNet-pretrained
    MobileNetV3-Small, follow an image through its blocks, see which layers are frozen and
    why, read the new two-class head, check the 928,162 parameters of the article's Table 1,
    and understand why the head and the backbone get learning rates 10,000 times apart.
    """,
    imports="""
    import torch

    from helpers.config import Config, config_from_env
    from helpers.data import find_dataset
    from helpers.model import (
        PneumoniaNet,
        build_model,
        count_parameters,
        imagenet_weights,
        model_summary,
        parameter_groups,
        weights_cache_path,
    )
    from helpers.notebooks import show_setup
    """,
    cells=[
        md(
            """
            ## 1. Why MobileNetV3-Small

            MobileNetV3 was designed to run on phones: cheap depthwise-separable convolutions,
            channel attention (squeeze-and-excitation) and the hard-swish activation. The *Small*
            variant has about 2.5 million parameters in its ImageNet form, a tenth of a
            ResNet-50. It trains in minutes on a free Colab or Kaggle GPU and is usable on a CPU,
            and with about 5,000 training X-rays a small network also has less room to memorise
            them. We keep its convolutional part (`features`, 13 blocks) and replace its
            1,000-class ImageNet classifier with our own two-class head.

            ## 2. Building the model and its weights

            `build_model(config.pretrained)` accepts three choices:

            * `"imagenet"`: load the ImageNet weights (torchvision downloads them once into its
              cache) and freeze the early layers;
            * `"none"`: random weights and nothing frozen;
            * `"auto"` (the default): ImageNet weights when they can be had, otherwise a loud
              warning and `"none"`, for instance on a machine without internet access.

            Without pretrained weights, freezing would be pointless (frozen random filters detect
            nothing useful), so the **whole network trains from scratch**, with one learning rate
            for all layers (`config.scratch_lr`). Expect clearly worse results then: what transfer
            learning brings is exactly the features learned on ImageNet.
            """
        ),
        code(
            """
            model = build_model(config.pretrained, dropout=config.dropout)
            print(f"weights: {model.weights_used}; early layers frozen: {model.frozen}")
            print(f"ImageNet weights file: {weights_cache_path()} (present: {weights_cache_path().is_file()})")
            """
        ),
        md(
            """
            **Offline?** Download the file below on a machine with internet access and copy it to
            the path printed above (torchvision's cache, under `$TORCH_HOME/hub/checkpoints` or
            `~/.cache/torch`): `build_model` finds it there next time.
            """
        ),
        code("print(imagenet_weights().url)"),
        md(
            """
            ## 3. An image's way through the blocks

            To study the architecture we use a network frozen exactly as it is with ImageNet
            weights (`PneumoniaNet(frozen=True)`): shapes and parameter counts do not depend on
            the values of the weights, so this works offline too.
            """
        ),
        code(
            """
            torch.manual_seed(config.seed)
            frozen_model = PneumoniaNet(dropout=config.dropout, frozen=True).eval()
            x = torch.zeros(1, 3, Config().image_size, Config().image_size)
            with torch.no_grad():
                for i, block in enumerate(frozen_model.features):
                    x = block(x)
                    status = "TRAINS" if any(p.requires_grad for p in block.parameters()) else "frozen"
                    print(f"features[{i:2d}] {type(block).__name__:21s} -> {tuple(x.shape)}  {status}")
            """
        ),
        md(
            """
            The side halves five times (blocks 0, 1, 2, 4 and 9), from 256 to 8: the 256 / 32 of
            notebook 01. Meanwhile the channels grow from 16 to 576: each position of the final
            8 × 8 grid is described by 576 features.

            ## 4. Freeze all but the last two blocks

            The early layers of a network trained on ImageNet detect edges, blobs, gradients and
            textures: useful in any image, X-rays included. The late layers combine them into
            features specific to ImageNet's classes (fur, wheels, faces) that have little to do
            with lungs. So we keep the early layers as they are (**frozen**: no gradients, and
            their BatchNorm statistics stay fixed) and let only the last inverted-residual block
            (`features[11]`) and the final 1 × 1 convolution (`features[12]`, 96 → 576 channels)
            adapt to X-rays. Fewer weights to fit from a few thousand images means less
            overfitting, and no gradients through the frozen part means faster training.

            The two trainable blocks are *fine-tuned*, not reset: they start from their ImageNet
            values and move slowly (section 7). A detail the model takes care of: a frozen layer
            must stay in evaluation mode even while the rest trains, otherwise its BatchNorm
            layers would keep updating their statistics and the "frozen" part would drift.

            ## 5. The torchinfo summary (the article's Table 1)
            """
        ),
        code("print(model_summary(image_size=Config().image_size))"),
        code(
            """
            counts = count_parameters(frozen_model)
            print({name: f"{n:,}" for name, n in counts.items()})
            table_1 = {"total": 928_162, "trainable": 351_698, "frozen": 576_464}  # article's Table 1
            assert counts == table_1, counts
            """
        ),
        md(
            """
            928,162 parameters, of which 351,698 train (the last two blocks and the head) and
            576,464 are frozen. The ImageNet MobileNetV3-Small has about 2.5 million: the
            difference is its classifier (two linear layers, 576 → 1,024 → 1,000), which we
            dropped.

            ## 6. The head returns logits

            After the backbone comes our head: global average pooling (each of the 576 channels
            of the 8 × 8 grid becomes one number, wherever in the image the feature was found),
            flatten, **dropout 0.5** (during training, half of those 576 numbers are zeroed at
            random, so the decision cannot lean on a few of them), and `Linear(576, 2)`, one
            output per class. These two outputs are **logits**, not probabilities. The loss,
            `nn.CrossEntropyLoss`, expects logits and applies the (log-)softmax itself, in a
            numerically stable way; a softmax inside the model would be applied twice. The softmax
            appears only where we want probabilities, at evaluation: P(pneumonia) =
            softmax(logits)[1].
            """
        ),
        code("print(frozen_model.head)"),
        code(
            """
            with torch.no_grad():
                outputs = frozen_model(torch.randn(2, 3, config.image_size, config.image_size))
            print("two images in, one pair of logits per image out:", tuple(outputs.shape))
            """
        ),
        md(
            """
            Two made-up pairs of logits show both uses: the softmax turns them into
            probabilities, and the cross-entropy computed from the logits is exactly the mean of
            −log P(true class).
            """
        ),
        code(
            """
            logits = torch.tensor([[2.0, -1.0], [0.5, 1.5]])
            targets = torch.tensor([0, 1])  # the true classes: NORMAL, PNEUMONIA
            probabilities = torch.softmax(logits, dim=1)
            print("P(pneumonia) = softmax(logits)[:, 1]:", probabilities[:, 1])
            print("cross-entropy from the logits:  ", torch.nn.functional.cross_entropy(logits, targets).item())
            print("mean -log P(true class), by hand:", -probabilities[[0, 1], targets].log().mean().item())
            """
        ),
        md(
            """
            ## 7. Two learning rates

            The head starts from random weights and must learn everything: it gets a large
            learning rate, 1e-2. The two fine-tuned blocks start from good ImageNet weights and
            should only adjust: they get 1e-6, so small that they cannot forget what they know.
            `parameter_groups` puts them in two groups of the optimiser; frozen parameters are
            left out. From scratch, both groups use `config.scratch_lr`.
            """
        ),
        code(
            """
            built = f"as built here ({model.weights_used})"
            for label, net in [("frozen (ImageNet recipe)", frozen_model), (built, model)]:
                print(label)
                for group in parameter_groups(net, config):
                    n_params = sum(p.numel() for p in group["params"])
                    print(f"  {group['name']:9s} lr {group['lr']:.0e}  {n_params:>9,} parameters")
            """
        ),
        md("Next: **04 · Training**, where these groups get an optimiser and a schedule."),
    ],
)

# --- 04 -----------------------------------------------------------------------------------

NB04 = dict(
    file_name="04_training.ipynb",
    title="04 · Training: the article's recipe, with its bugs fixed",
    learn="""
    In this notebook you train the model and learn how the pieces of a training run fit
    together: a class-weighted loss against the imbalance, AdamW with one learning rate for the
    head and another for the backbone, cosine annealing with warm restarts, gradient clipping,
    and early stopping on a patient-grouped validation set. You also see which bugs of the
    article's original notebook this project fixes, and read the training curves (the
    article's Fig. 6).
    """,
    imports="""
    import pandas as pd
    import torch

    from helpers.config import CLASSES, config_from_env, outputs_dir
    from helpers.data import class_weights, find_dataset
    from helpers.notebooks import show_setup, uses_demo_data
    from helpers.plots import figures_dir, plot_history
    from helpers.train import estimate_cpu_schedule, pick_device, prepare_data, read_history, train
    """,
    cells=[
        md(
            """
            ## 1. The recipe

            Every constant of the recipe lives in one `Config` object; the notebooks and the
            command line read it from there. To try another value, change it with
            `config = config.replace(epochs=20)` rather than editing code. All values are the
            article's except `augment` (`"robust"`, this project's default, notebook 02; `"article"`
            for the article's exact augmentation), `seed` (the original defined one but never used
            it) and `scratch_lr`, used only when no ImageNet weights are available.
            """
        ),
        code(
            """
            recipe = "image_size augment batch_size head_lr backbone_lr scratch_lr betas eps".split()
            recipe += "weight_decay t_0 t_mult eta_min grad_clip patience epochs seed".split()
            pd.Series({name: config.to_dict()[name] for name in recipe}, name="value").to_frame()
            """
        ),
        md(
            """
            ## 2. A weighted loss against the imbalance

            The article weights the cross-entropy loss of each class by

            `weight[c] = n_total / (n_c × n_classes)`

            The rarer class gets the larger weight, and each class's weights add up to the same
            total (`n_total / n_classes`), so both classes contribute equally to the loss. A
            NORMAL image misclassified costs about three times as much as a PNEUMONIA one, which
            keeps the network from buying a lower loss by leaning towards PNEUMONIA.
            `prepare_data` scans the data, makes the patient-grouped split of notebook 02 and opens
            its image cache (already built there, so nothing is decoded again).
            """
        ),
        code(
            """
            data = prepare_data(config, location.root)
            _, train_targets = data.rows("train")
            weights = class_weights(train_targets)
            for target, name in enumerate(CLASSES):
                n = train_targets.count(target)
                formula = f"{len(train_targets)} / ({n} x {len(CLASSES)})"
                print(f"{name:9s} {n:5d} images  weight = {formula} = {weights[name]:.3f}")
            """
        ),
        md(
            "On the full Kaggle training split (1,341 NORMAL and 3,875 PNEUMONIA images) that gives:"
        ),
        code("class_weights([0] * 1341 + [1] * 3875)"),
        md(
            """
            ## 3. Optimiser and learning-rate schedule

            **AdamW** is Adam with *decoupled* weight decay: every step shrinks the weights a
            little (here by `weight_decay` = 5e-2 times the learning rate) independently of the
            gradient, which keeps them small and the model simpler. It gets the two parameter
            groups of notebook 03: head at 1e-2, fine-tuned blocks at 1e-6.

            **Cosine annealing with warm restarts** (`T_0=5, T_mult=2, eta_min=1e-8`), stepped
            once per epoch: each learning rate follows half a cosine from its starting value
            down to `eta_min` over 5 epochs, then jumps back up (a *warm restart*) for a cycle
            twice as long (10 epochs), then 20, and so on. The high rate after a restart can
            shake the weights out of a narrow minimum; the longer, later cycles let training
            settle. The learning rate of the head over the first 36 epochs:
            """
        ),
        code(
            """
            probe = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=config.head_lr)
            schedule = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
                probe, T_0=config.t_0, T_mult=config.t_mult, eta_min=config.eta_min
            )
            head_lr = {}
            for epoch in range(1, 37):
                head_lr[epoch] = probe.param_groups[0]["lr"]
                probe.step()
                schedule.step()
            pd.Series(head_lr, name="head learning rate").loc[[1, 3, 5, 6, 10, 15, 16, 25, 35, 36]].to_frame()
            """
        ),
        md(
            """
            The restarts happen at epochs 6, 16 and 36.

            **Gradient clipping at 0.5.** Before each step, if the gradient of all trainable
            weights taken together is longer than 0.5, it is scaled down to length 0.5. One odd
            batch (a few mislabelled or unusual images) then cannot throw the weights far, which
            matters with the head's large learning rate.

            **Early stopping.** After every epoch the loss is measured on the validation split.
            The weights of the best epoch so far are saved (`best.pt`); when the validation loss
            has not improved for 10 epochs (`patience`), training stops (at most 100 epochs) and
            the best weights are restored. We watch the loss rather than the accuracy because it
            changes smoothly and also rewards becoming more confident when right, where accuracy
            only changes when a prediction crosses 0.5.

            ## 4. Bugs of the original notebook that this project fixes

            Reading the article's notebook cell by cell turned up these problems; each one is
            fixed in `helpers`:

            * **Training silently in evaluation mode.** `model.train()` was called once, before
              the loop, and validation switched the model to `eval()` without switching back: from
              the second epoch on, dropout was off and BatchNorm behaved as at test time during
              training. Here every epoch starts with `model.train()`.
            * **Augmented validation and test images.** One random transform served all splits,
              so the reported scores were measured on randomly altered images (notebook 02). Here
              evaluation is deterministic.
            * **`eta_min` defined but never passed** to the scheduler, so the learning rate fell
              to 0 instead of 1e-8 at the end of each cycle. Here it is passed.
            * **Seed never used.** A seed constant existed but nothing was seeded, so no two runs
              were alike. Here `config.seed` fixes the initialisation, the split, the shuffling
              and the augmentation.
            * **F1 averaged over batches.** The mean of per-batch F1 scores is not the F1 of the
              epoch (F1 is not an average of per-batch parts, and a small last batch counted as
              much as a full one). Here F1 is computed once over all predictions of an epoch.
            * **Early stopping on 16 images**, the official `val` folder. Here it watches a
              patient-grouped validation split (notebook 02).

            ## 5. Which device?

            A GPU trains this model many times faster than a CPU.
            """
        ),
        code(
            """
            device = pick_device()
            print(f"training on: {device}")
            if device.type == "cpu":
                print(
                    "No GPU found. On Colab: Runtime > Change runtime type > a GPU (e.g. T4) > Save, "
                    "then run all cells again. On Kaggle: Settings > Accelerator > GPU. On a CPU, "
                    "prefer the quick recipe (PNEUMONIA_QUICK=1)."
                )
            """
        ),
        md(
            """
            How long would the full recipe take on a CPU? `python -m helpers bench train`
            measured the training speed on a 2-core CPU (see `benchmarks/README.md`); scaled to
            this dataset, the article's frozen ImageNet configuration and a from-scratch run
            (what you get offline) compare like this, for the maximum of 100 epochs (early
            stopping usually ends far sooner):
            """
        ),
        code(
            """
            n_train, n_val = len(data.splits["train"]), len(data.splits["val"])
            for frozen in (True, False):
                est = estimate_cpu_schedule(n_train, n_val, frozen, epochs=100)
                name = "frozen ImageNet backbone" if frozen else "from scratch           "
                print(f"{name}: ~{est['seconds_per_epoch']:.0f} s/epoch, <= {est['hours']:.1f} h")
            """
        ),
        md(
            """
            ## 6. Train

            One call runs the whole loop and writes a **run folder**: `config.json` (recipe, data,
            library versions), `history.csv` (one row per epoch), `best.pt` (the best epoch's
            weights) and `last.pt` (everything needed to resume an interrupted run). Notebook 05
            reads this folder. In quick mode it takes a minute or so on a CPU; the full recipe
            wants a GPU.
            """
        ),
        code(
            """
            run_dir = outputs_dir() / "runs" / "notebook"
            result = train(config, run_dir, data_dir=location.root, prepared=data)
            print(f"best epoch {result.best_epoch}, validation loss {result.best_val_loss:.4f}")
            print(f"stopped early: {result.stopped_early}; weights: {result.model.weights_used}")
            print(f"run folder: {run_dir}")
            """
        ),
        code(
            """
            history = read_history(run_dir)
            history.tail().round(4)
            """
        ),
        code('plot_history(history, result.best_epoch, save=figures_dir() / "04_history.png")'),
        md(
            """
            **Reading the curves (the article's Fig. 6).** Left, the loss: training loss comes
            from augmented images with dropout on, so it can sit *above* the validation loss;
            when the validation loss turns up while the training loss keeps falling, the model is
            starting to memorise. Middle, the F1 score on both splits. Right, the learning rates
            on a log scale, where the warm restarts show as jumps. The dashed line marks the best
            epoch, whose weights were kept. In quick mode there are only 6 epochs, enough to
            cross the first restart.
            """
        ),
        code(
            """
            if uses_demo_data(location):
                print("SYNTHETIC demo data: these curves show that training works, nothing about X-rays.")
            if result.model.weights_used == "none":
                print("No ImageNet weights were available: trained from scratch (see notebook 03).")
            """
        ),
        md("Next: **05 · Evaluation** scores this run on the test split."),
    ],
)

# --- 05 -----------------------------------------------------------------------------------

NB05 = dict(
    file_name="05_evaluation.ipynb",
    title="05 · Evaluation: how good is the model, and how sure can we be?",
    learn="""
    A single accuracy figure hides most of what matters about a classifier. In this notebook
    you evaluate the trained model on the untouched test split: the article's classification
    report (Table 2) and confusion matrix (Fig. 7), then what a careful reader adds: ROC and
    precision-recall curves, sensitivity, specificity and the threshold that trades one for
    the other, a threshold chosen on validation data, bootstrap confidence intervals, and
    Grad-CAM maps of where the network looked. It ends with what these numbers do and do not
    mean.
    """,
    imports="""
    import numpy as np
    import pandas as pd
    import torch
    from IPython.display import display

    from helpers.config import CLASSES, config_from_env, outputs_dir
    from helpers.data import find_dataset
    from helpers.evaluate import (
        classification_report_table,
        compute_metrics,
        evaluate_run,
        most_confident_mistakes,
        pr_points,
        roc_points,
    )
    from helpers.explain import GradCAM
    from helpers.notebooks import show_setup
    from helpers.plots import (
        figures_dir,
        plot_confusion_pair,
        plot_gradcam_grid,
        plot_image_grid,
        plot_pr,
        plot_probability_histogram,
        plot_roc,
    )
    from helpers.preprocess import load_gray, normalize_batch
    from helpers.train import load_model_from_run, train
    """,
    cells=[
        md(
            """
            ## 1. Score the test split

            We evaluate the run that notebook 04 trained. If there is none (you opened this
            notebook first), a quick run is trained here, and the output says so.
            """
        ),
        code(
            """
            run_dir = outputs_dir() / "runs" / "notebook"
            if (run_dir / "best.pt").is_file():
                print(f"evaluating the run trained in notebook 04: {run_dir}")
            else:
                print(f"no trained run in {run_dir} (notebook 04 has not run): training a QUICK run now")
                train(config.quick_mode(), run_dir, data_dir=location.root)
            """
        ),
        md(
            """
            `evaluate_run` loads the best weights, scores every test image without augmentation
            and writes `metrics-test.json` and `predictions-test.csv` (one row per image: path,
            true class, P(pneumonia)) into the run folder. The test images were never used for a
            decision, not for training, not for early stopping, not for choosing a threshold:
            that is what makes their numbers an honest estimate.
            """
        ),
        code(
            """
            metrics = evaluate_run(run_dir, data_dir=location.root, split="test")
            predictions = pd.read_csv(run_dir / "predictions-test.csv")
            y, p = predictions["target"].to_numpy(), predictions["p_pneumonia"].to_numpy()
            print(f"{metrics['n_images']} test images; weights: {metrics['weights_used']}")
            predictions.head()
            """
        ),
        md(
            """
            ## 2. The classification report (the article's Table 2)

            The model predicts the class with the larger logit, which is the same as
            P(pneumonia) ≥ 0.5. For each class, **precision** is the share of the images
            *called* that class that really are; **recall** is the share of the images *of* that
            class that were found; **F1** is their harmonic mean, high only when both are;
            **support** is the number of images. The macro average treats both classes alike; the
            weighted average weights them by support (the article reports 88 % accuracy and a
            weighted F1 of 87 %).
            """
        ),
        code("classification_report_table(y, (p >= 0.5).astype(int)).round(3)"),
        md("## 3. The confusion matrix (the article's Fig. 7)"),
        code(
            'plot_confusion_pair(metrics["confusion_matrix"], save=figures_dir() / "05_confusion_matrix.png")'
        ),
        md(
            """
            Rows are the true class, columns the prediction. The left matrix counts images; the
            right one divides each row by its total, so that classes of different sizes compare:
            each row sums to 100 %, the NORMAL row's diagonal cell is the **specificity** and the
            PNEUMONIA row's diagonal cell the **sensitivity**. The article's model found nearly
            every pneumonia but flagged a good share of the normal X-rays as pneumonia.

            ## 4. ROC and precision-recall curves

            Every threshold on P(pneumonia) gives one pair (false-positive rate, sensitivity);
            the **ROC curve** traces all of them. The area under it, **AUROC**, is the chance that
            a random pneumonia X-ray gets a higher P(pneumonia) than a random normal one: 0.5 is
            guessing, 1 a perfect ranking. It does not depend on any threshold. The markers show
            the threshold 0.5 and a threshold chosen on validation data (section 6).
            """
        ),
        code(
            """
            val = metrics["val_threshold"]
            fpr, tpr, _ = roc_points(y, p)
            points = {
                "threshold 0.5": (1 - metrics["specificity"], metrics["sensitivity"]),
                f"validation Youden {val['threshold']:.2f}": (1 - val["specificity"], val["sensitivity"]),
            }
            plot_roc(fpr, tpr, metrics["roc_auc"], points, save=figures_dir() / "05_roc.png")
            """
        ),
        md(
            """
            The **precision-recall curve** asks a different question: among the images flagged
            as pneumonia, how many really are (precision), as we flag more of them (recall)?
            Its "no skill" line is the share of pneumonia in the test set, not 0.5: flagging
            images at random gives exactly that precision. **Average precision** (AP) summarises
            the curve.
            """
        ),
        code(
            """
            precision, recall, _ = pr_points(y, p)
            ap, prevalence = metrics["average_precision"], float(y.mean())
            plot_pr(recall, precision, ap, prevalence, save=figures_dir() / "05_pr.png")
            """
        ),
        md(
            """
            ## 5. Sensitivity, specificity and the threshold

            With PNEUMONIA as the positive class, **sensitivity** = TP / (TP + FN) is the share of
            sick children found, and **specificity** = TN / (TN + FP) the share of healthy ones
            correctly cleared. For screening, sensitivity usually matters more (a missed
            pneumonia costs more than a second look), but every false alarm costs a doctor's time
            and erodes trust in the tool. Nothing makes 0.5 special: lowering the threshold finds
            more pneumonia and raises more false alarms, raising it does the opposite.
            """
        ),
        code(
            """
            keys = ["sensitivity", "specificity", "accuracy", "weighted_f1"]
            trade_off = {t: compute_metrics(y, p, t) for t in (0.1, 0.3, 0.5, 0.7, 0.9)}
            table = pd.DataFrame({t: {k: m[k] for k in keys} for t, m in trade_off.items()}).T
            table.rename_axis("threshold").round(3)
            """
        ),
        md(
            """
            This table is computed on the test set, to show the trade-off. Picking the best row
            from it would be tuning on the test set, which the next section avoids.

            ## 6. A threshold chosen on validation data

            **Youden's J** = sensitivity + specificity − 1; the threshold that maximises it is the
            point of the ROC curve farthest above the diagonal. `evaluate_run` chooses it on the
            **validation** split (patients the model did not train on, but not the test
            patients) and applies that fixed number to the test split. Choosing it on the test
            split would fit the threshold to the very images we report on, and the test numbers
            would come out optimistic. The validation split comes from the training
            distribution, the test split does not, so the validation-chosen threshold is not
            necessarily the best one on test: that gap is itself informative.
            """
        ),
        code(
            """
            print(f"threshold {val['threshold']:.3f}: {val['source']}")
            pd.DataFrame(
                {
                    "argmax (0.5)": {k: metrics[k] for k in keys},
                    f"validation Youden ({val['threshold']:.2f})": {k: val[k] for k in keys},
                }
            ).T.round(3)
            """
        ),
        md(
            """
            ## 7. Bootstrap confidence intervals

            The test split has 624 images, so every metric is an estimate with noise: a
            different set of 624 children would give different numbers. The bootstrap measures
            that noise: it draws 1,000 new "test sets" of the same size from the test images
            (with replacement), recomputes each metric on each, and keeps the middle 95 % of the
            values as a 95 % interval. Two models whose intervals largely overlap cannot be told
            apart by this test set.
            """
        ),
        code(
            """
            rows = {
                name: {"value": metrics[name], "95% low": ci[0], "95% high": ci[1]}
                for name, ci in metrics["ci95"].items()
                if ci
            }
            pd.DataFrame(rows).T.round(3)
            """
        ),
        md(
            """
            ## 8. The predicted probabilities

            Ideally the NORMAL images pile up near 0 and the PNEUMONIA images near 1. NORMAL
            images to the right of the dashed line are false alarms, PNEUMONIA images to its left
            are missed; where the two histograms overlap, no threshold can separate them. (The
            vertical axis is logarithmic, so that single images remain visible.)
            """
        ),
        code(
            'plot_probability_histogram(y, p, threshold=0.5, save=figures_dir() / "05_probability_histogram.png")'
        ),
        md(
            """
            ## 9. Where did the network look? Grad-CAM

            Grad-CAM weights each feature map of a layer by how much it raised the score of the
            predicted class, and shows the result as a heatmap over the image. We use the last
            convolutional block, `model.features[-1]`, whose grid is 8 × 8 at 256 pixels (only
            2 × 2 in quick mode, hence very coarse maps). It is a sanity check, not a diagnosis:
            heat on the lungs is reassuring; heat on the image border, a text marker or outside
            the body reveals a shortcut. Four test images the model got right and four it got
            wrong:
            """
        ),
        code(
            """
            model, run_config, _ = load_model_from_run(run_dir)
            size = run_config.image_size
            correct = (p >= 0.5) == y
            rng = np.random.default_rng(config.seed)
            right, wrong = np.flatnonzero(correct), np.flatnonzero(~correct)
            chosen = np.concatenate([rng.permutation(right)[:4], rng.permutation(wrong)[:4]])
            pictures = np.stack([load_gray(path, size) for path in predictions["path"].iloc[chosen]])
            heatmaps = GradCAM(model, model.features[-1])(normalize_batch(torch.from_numpy(pictures)[:, None]))
            titles = [
                f"{'right' if correct[i] else 'WRONG'}: true {CLASSES[y[i]]}\\nP(pneumonia) {p[i]:.2f}"
                for i in chosen
            ]
            plot_gradcam_grid(pictures / 255, heatmaps, titles, ncols=4, save=figures_dir() / "05_gradcam.png")
            """
        ),
        md(
            """
            ## 10. The most confident mistakes

            The errors the model was surest about are worth a look: a mislabelled image, an
            unusual exposure, a tube or an electrode, a very young child. They show what the model
            has not learned, and sometimes what is wrong with the data.
            """
        ),
        code(
            """
            worst = most_confident_mistakes(y, p, k=8)
            print(f"{int((~correct).sum())} mistakes in total; the {len(worst)} most confident:")
            if len(worst):
                pictures = [load_gray(path, size) for path in predictions["path"].iloc[worst]]
                titles = [f"true {CLASSES[y[i]]}\\nP(pneumonia) {p[i]:.2f}" for i in worst]
                save = figures_dir() / "05_confident_mistakes.png"
                display(plot_image_grid(pictures, titles, ncols=4, save=save))
            """
        ),
        md(
            """
            ## 11. What these numbers do and do not mean

            * **The test split is not distributed like the training data.** The official test
              folder has a larger share of NORMAL images (234 of 624) than the training folder
              (1,341 of 5,216), and its images were not selected in the same way. Models trained
              on this dataset tend to over-call pneumonia on it: high sensitivity, poor
              specificity, as the article's confusion matrix shows. The robust augmentation of
              notebook 02 is meant to make the model less sensitive to such differences; only
              the test numbers can say how far it succeeds.
            * **Validation numbers flatter.** Our validation split is carved out of the training
              pool: other patients, but the same distribution. Its scores are usually better than
              the test scores; only the untouched test split estimates performance on new data,
              and only on data like it.
            * **The intervals cover sampling noise only.** They say how much the numbers would
              move with another sample of the same kind of X-rays, not what happens in another
              hospital, with other machines or other patients. The whole dataset comes from one
              centre, and its patients are young children.
            * **Demo data means nothing medically.** If this notebook ran on the synthetic demo
              dataset, every number above describes drawings from a random generator; it tests
              the code, nothing else.
            * **This is a teaching project, not a medical device.** No number here supports any
              decision about a person.
            """
        ),
        code(
            """
            if metrics["is_demo"]:
                print("*** SYNTHETIC demo data: these results test the code, not a model of pneumonia. ***")
            """
        ),
    ],
)

NOTEBOOK_SPECS = (NB01, NB02, NB03, NB04, NB05)


def build_all(repository: str | None = None) -> dict[str, nbformat.NotebookNode]:
    """Every notebook of the series, by file name, for ``repository`` (default: pyproject)."""
    repository = repository or repository_url()
    return {spec["file_name"]: notebook(**spec, repository=repository) for spec in NOTEBOOK_SPECS}


def write_all(folder: Path = HERE) -> list[Path]:
    """Write the notebooks into ``folder`` (temporary file, then rename); return their paths."""
    written = []
    for name, nb in build_all().items():
        nbformat.validate(nb)
        target = folder / name
        fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}-", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                nbformat.write(nb, handle)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(target)
    return written


if __name__ == "__main__":
    for path in write_all(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
        print(f"wrote {path}")
