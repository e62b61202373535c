# Sourced on a lent GPU machine, in the checkout, by the call that runs benchmarks/gpu_check.sh (see
# benchmarks/gpu_lease.py): joins the carried FID weight parts into .cache/fid/ and checks their sha256, installs the
# carried wheels into /tmp/site (once per machine) and puts it on PYTHONPATH. Returns non-zero, saying why, when a
# part or a wheel is missing.
python3 benchmarks/gpu_lease.py join || return 1
if [ ! -d /tmp/site/diffusers ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .carry/call-1/wheels/*.whl || return 1
fi
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
python3 -c "import diffusers, torch_fidelity, torchsde; print('diffusers', diffusers.__version__, 'torch-fidelity', torch_fidelity.__version__)" || return 1
