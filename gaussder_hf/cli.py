"""The ``gaussder-hf`` command line.

    gaussder-hf datasets build rescaled_fashion_mnist --data-dir /usr/share/datasets/fashion-mnist
    gaussder-hf datasets export rescaled_fashion_mnist --data-dir ... --output out/rescaled_fashion_mnist
"""
from __future__ import annotations

import argparse
import sys
import time


def _add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    from .data import BUILDER_NAMES  # the names only: --help imports neither datasets nor the builders

    parser.add_argument('name', choices=sorted(BUILDER_NAMES), help='dataset to build')
    parser.add_argument('--data-dir', help='folder with the original files (default: download them)')
    parser.add_argument('--cache-dir', help='datasets cache folder, also for extracted archives and the record of '
                        'checked md5s (default: the HF datasets cache)')
    parser.add_argument('--max-examples', type=int, help='use only the first N originals of every split')
    parser.add_argument('--num-proc', type=int, help='processes for building')


def _build(args):
    from .data import builder_for

    kwargs = dict(data_dir=args.data_dir, cache_dir=args.cache_dir)
    if args.max_examples is not None:
        kwargs['max_examples'] = args.max_examples
    builder = builder_for(args.name, **kwargs)
    start = time.perf_counter()
    builder.download_and_prepare(num_proc=args.num_proc)
    dataset = builder.as_dataset()
    print(f'built {args.name} in {time.perf_counter() - start:.1f} s at {builder.cache_dir}')
    for split, ds in dataset.items():
        print(f'  {split:<12} {len(ds):>7,} examples')
    return builder, dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='gaussder-hf', description=__doc__.split('\n')[1])
    commands = parser.add_subparsers(dest='group', required=True)
    data = commands.add_parser('datasets', help='build and export the rescaled benchmark datasets')
    actions = data.add_subparsers(dest='action', required=True)
    build = actions.add_parser('build', help='build a dataset into the datasets cache')
    _add_dataset_arguments(build)
    export = actions.add_parser('export', help='build, then write parquet shards and a dataset card')
    _add_dataset_arguments(export)
    # --output-dir as in the recipes (--output_dir there) and timm's scripts; --output is the older spelling.
    export.add_argument('--output-dir', '--output_dir', '--output', dest='output', required=True,
                        help='folder to write: new, empty, or an earlier export (replaced whole)')
    export.add_argument('--push-to-hub', metavar='REPO_ID', help='also upload the folder to this dataset repo')
    args = parser.parse_args(argv)

    builder, dataset = _build(args)
    if args.action == 'export':
        from .data.export import export_dataset, push_dataset_folder

        folder = export_dataset(dataset, args.output, builder)
        print(f'exported to {folder}')
        if args.push_to_hub:
            print(push_dataset_folder(folder, args.push_to_hub))
    return 0


if __name__ == '__main__':
    sys.exit(main())
