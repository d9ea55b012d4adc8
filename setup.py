"""Packaging for fastvideo: every field comes from settings.ini, the nbdev 2 source of truth."""
from configparser import ConfigParser
import setuptools

cfg = ConfigParser(delimiters=["="])
cfg.read("settings.ini", encoding="utf-8")
cfg = cfg["DEFAULT"]

for key in "version description keywords author author_email license min_python lib_name user".split():
    if key not in cfg: raise KeyError(f"settings.ini: missing required key `{key}`")

licenses = {"apache2": "Apache-2.0"}  # an SPDX expression: setuptools deprecates license classifiers
status_names = "1 - Planning|2 - Pre-Alpha|3 - Alpha|4 - Beta|5 - Production/Stable|6 - Mature|7 - Inactive".split("|")
py_versions = "3.10 3.11 3.12 3.13".split()
min_python = cfg["min_python"]

requirements = cfg.get("requirements", "").split()
dev_requirements = cfg.get("dev_requirements", "").split()
console_scripts = cfg.get("console_scripts", "").split()

setuptools.setup(
    name=cfg["lib_name"],
    version=cfg["version"],
    description=cfg["description"],
    keywords=cfg["keywords"],
    author=cfg["author"],
    author_email=cfg["author_email"],
    license=licenses[cfg["license"]],
    classifiers=[
        "Development Status :: " + status_names[int(cfg["status"]) - 1],
        "Intended Audience :: " + cfg["audience"].title(),
        "Natural Language :: " + cfg["language"].title(),
    ] + ["Programming Language :: Python :: " + v for v in py_versions[py_versions.index(min_python):]],
    url=cfg["git_url"],
    packages=setuptools.find_namespace_packages(include=["fastvideo", "fastvideo.*"]),  # assets/ folders too: no "would be ignored" warning
    include_package_data=True,
    package_data={"fastvideo": ["assets/**/*"]},
    install_requires=requirements,
    extras_require={"dev": dev_requirements, "flash": ["flash-attn"]},
    dependency_links=cfg.get("dep_links", "").split(),
    python_requires=">=" + min_python,
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    zip_safe=False,
    entry_points={"console_scripts": console_scripts, "nbdev": [f"{cfg['lib_name']}={cfg['lib_name']}._modidx:d"]},
)
