"""Input is checked once, at the edge, as a security boundary (issue 12, item 9).

Every value that reaches a ``#SBATCH``/``#OAR`` line, an ``oarsub`` argument or a shell is either refused with
the parameter's name before anything is written or submitted, or quoted where a shell reads it. The rendering
tests need no cluster; the ones marked ``slurm``/``oar`` submit to the real schedulers.
"""

import math
import os
import subprocess
import sys

import pytest

from oarfutures import LocalPoolExecutor, OarPoolExecutor, SlurmPoolExecutor
from oarfutures.backends import params
from oarfutures.backends.base import BatchSubmission

import tasks
from conftest import require_command

EXECUTORS = [SlurmPoolExecutor, OarPoolExecutor]


def _submission(folder, count=1):
    return BatchSubmission("b", 0, count, folder, "/usr/bin/python3", None, {}, False)


def slurm_script(folder, **parameters):
    backend = SlurmPoolExecutor(folder=folder, max_array_size=1001, **parameters).backend
    return backend.render_script(_submission(folder), 0, 1)


def oar_rendering(folder, **parameters):
    return OarPoolExecutor(folder=folder, **parameters).backend.render_script(_submission(folder))


def nothing_written(folder):
    return not os.path.exists(folder) or os.listdir(os.path.join(folder, "jobs")) == []


@pytest.mark.parametrize(
    "executor, parameters, named",
    [
        (SlurmPoolExecutor, {"partition": "cpu\n"}, "partition"),
        (SlurmPoolExecutor, {"name": "job\n"}, "name"),
        (OarPoolExecutor, {"queue": "default\n"}, "queue"),
        (OarPoolExecutor, {"job_types": ["besteffort\n"]}, "job_types"),
    ],
)
def test_a_single_word_with_a_trailing_newline_is_refused(folder, executor, parameters, named):
    with pytest.raises(ValueError, match=named):
        executor(folder=folder, **parameters)
    assert nothing_written(folder)


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("key", ["constraint\n", "x;touch /tmp/PWNED", "a b", "--t", "x=y", "", "-"])
def test_an_additional_parameter_key_must_be_an_option_name(folder, executor, key):
    with pytest.raises(ValueError, match=r"additional_parameters key .* not an option name"):
        executor(folder=folder, additional_parameters={key: "x"})
    assert nothing_written(folder)


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("value", [None, False, b"v100", ["a"], math.nan])
def test_an_additional_parameter_value_that_cannot_be_rendered_is_refused_naming_its_key(folder, executor, value):
    with pytest.raises((TypeError, ValueError), match=r"additional_parameters\['hold_me'\]"):
        executor(folder=folder, additional_parameters={"hold_me": value})
    assert nothing_written(folder)


def test_slurm_flags_render_bare_numbers_as_text_and_one_letter_keys_as_short_options(folder):
    extra = {"exclusive": True, "nice": 10, "C": "v100", "mem_per_cpu": "1G"}
    script = slurm_script(folder, additional_parameters=extra)
    for line in ("#SBATCH --exclusive\n", "#SBATCH --nice=10\n", "#SBATCH -C v100\n", "#SBATCH --mem-per-cpu=1G\n"):
        assert line in script


@pytest.mark.parametrize(
    "executor, parameters, named",
    [
        (SlurmPoolExecutor, {"setup": b"module load python"}, "setup"),
        (OarPoolExecutor, {"setup": b"module load python"}, "setup"),
        (OarPoolExecutor, {"job_types": b"besteffort"}, "job_types"),
        (OarPoolExecutor, {"properties": b"host='a'"}, "properties"),
    ],
)
def test_bytes_are_refused_rather_than_rendered_byte_by_byte(folder, executor, parameters, named):
    with pytest.raises(TypeError, match=named):
        executor(folder=folder, **parameters)


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("name", ["walltime", "timeout_min", "mem_gb"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_nan_and_infinite_numbers_are_refused_naming_the_parameter(folder, executor, name, value):
    executor_ = executor(folder=folder)
    with pytest.raises(ValueError, match=name):
        executor_.update_parameters(**{name: value})
    executor_.shutdown()


@pytest.mark.parametrize(
    "executor, key, advice",
    [
        (SlurmPoolExecutor, "output", "folder="),
        (SlurmPoolExecutor, "o", "folder="),
        (SlurmPoolExecutor, "outp", "folder="),  # sbatch's getopt_long reads it as --output
        (SlurmPoolExecutor, "array", "map()"),
        (SlurmPoolExecutor, "job_name", "name="),
        (SlurmPoolExecutor, "time", "walltime="),
        (SlurmPoolExecutor, "signal", "checkpoint_seconds="),
        (SlurmPoolExecutor, "wrap", "batch script"),
        (SlurmPoolExecutor, "W", "block"),
        (OarPoolExecutor, "O", "folder="),
        (OarPoolExecutor, "stdout", "folder="),
        (OarPoolExecutor, "STDERR", "folder="),  # Getopt::Long ignores the case of long options
        (OarPoolExecutor, "l", "resources="),
        (OarPoolExecutor, "d", "folder="),
        (OarPoolExecutor, "array_param_file", "map()"),
        (OarPoolExecutor, "S", "command line"),
    ],
)
def test_options_the_package_sets_itself_are_refused_with_what_to_use_instead(folder, executor, key, advice):
    with pytest.raises(ValueError, match=rf"additional_parameters '{key}' .*not accepted.*{advice}"):
        executor(folder=folder, additional_parameters={key: "x"})
    assert nothing_written(folder)


@pytest.mark.parametrize(
    "executor, key",
    [
        (SlurmPoolExecutor, "gpus"),  # an option of its own, although a prefix of --gpus-per-node
        (SlurmPoolExecutor, "ntasks"),
        (SlurmPoolExecutor, "constraint"),
        (OarPoolExecutor, "t"),  # the Grid'5000 example: additional_parameters={"t": "besteffort"}
        (OarPoolExecutor, "reservation"),
    ],
)
def test_options_the_package_does_not_set_are_accepted(folder, executor, key):
    executor(folder=folder, additional_parameters={key: "1"}).shutdown()


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("bad", ["a\nb", "a\rb", 'a"b', "a'b", "a\\b", "a\x00b"])
def test_a_folder_a_job_script_cannot_hold_is_refused_naming_folder_before_it_is_created(tmp_path, executor, bad):
    folder = tmp_path / bad
    with pytest.raises(ValueError, match="folder="):
        executor(folder=str(folder))
    assert not os.path.exists(tmp_path / bad.split("\x00")[0])


def test_job_folder_returns_the_absolute_path_and_refuses_what_is_not_a_text_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert params.job_folder("folder", "a b;c") == str(tmp_path / "a b;c")
    with pytest.raises(TypeError, match="folder"):
        params.job_folder("folder", b"/tmp/x")


def test_the_slurm_log_paths_are_quoted_with_percent_signs_kept_literal(tmp_path):
    folder = str(tmp_path / "a b;c%j")
    script = slurm_script(folder)
    logs = os.path.join(folder, "logs").replace("%", "%%")
    assert f'#SBATCH --output="{logs}/%A_%a.out"\n' in script
    assert f'#SBATCH --error="{logs}/%A_%a.err"\n' in script


def test_oarsub_is_told_the_job_folder_as_its_directory_and_the_log_paths_relative_to_it(tmp_path):
    folder = str(tmp_path / "a b;c")
    script, arguments = oar_rendering(folder)
    assert arguments[arguments.index("-d") + 1] == folder
    assert f"#OAR -d {folder}\n" in script  # OAR's -S reads the value up to the end of the line
    # OAR refuses -O/-E paths holding other characters than [A-Za-z0-9_./%\\ -]: the folder stays out of them
    assert arguments[arguments.index("-O") + 1] == "logs/%jobid%.out"
    assert arguments[arguments.index("-E") + 1] == "logs/%jobid%.err"


# ------------------------------------------------------------------- options smuggled in through a value
@pytest.mark.parametrize(
    "value",
    [
        "x --output=/elsewhere/%j.out",  # sbatch reads every #SBATCH word as an option of its own
        "x\t--array=0-999",
        "gpu#&ib",  # an unescaped '#' starts a comment: the rest would be cut silently
        "it's",  # an unmatched quote stops sbatch, naming no parameter
        'a"b',
        "a\\b",
        "x\u2028--array=0-9",
    ],
)
def test_a_slurm_additional_parameter_value_must_be_one_sbatch_word(folder, value):
    with pytest.raises(ValueError, match=r"additional_parameters\['comment'\]"):
        SlurmPoolExecutor(folder=folder, additional_parameters={"comment": value})
    assert nothing_written(folder)


def test_a_one_letter_slurm_option_refuses_a_value_sbatch_would_read_as_an_option(folder):
    # -H takes no value: "#SBATCH -H --output=..." would be two options
    with pytest.raises(ValueError, match=r"additional_parameters\['H'\].*read one starting with '-' as an option"):
        SlurmPoolExecutor(folder=folder, additional_parameters={"H": "--output=/elsewhere/%j.out"})
    assert nothing_written(folder)
    script = slurm_script(folder, additional_parameters={"nice": -5, "C": "v100&ib"})
    assert "#SBATCH --nice=-5\n" in script and "#SBATCH -C v100&ib\n" in script


def test_a_hash_in_a_slurm_option_value_is_refused_rather_than_cut(folder):
    with pytest.raises(ValueError, match=r"constraint='v100#\|a100'.*'#'"):
        SlurmPoolExecutor(folder=folder, constraint="v100#|a100")


@pytest.mark.parametrize("key", ["hold", "ho", "k", "use_job_key", "USE-JOB-KEY"])
def test_an_oarsub_flag_refuses_a_value_which_oarsub_would_read_as_more_options(folder, key):
    with pytest.raises(ValueError, match=rf"additional_parameters\['{key}'\].*takes no value, give True"):
        OarPoolExecutor(folder=folder, additional_parameters={key: "-d/"})
    assert nothing_written(folder)


def test_an_oarsub_flag_given_true_is_one_argument_and_an_option_needing_a_value_refuses_true(folder):
    _, arguments = oar_rendering(folder, additional_parameters={"hold": True, "notify": "mail:me@x.org"})
    assert arguments[arguments.index("--hold") + 1] == "--notify"
    assert arguments[arguments.index("--notify") + 1] == "mail:me@x.org"
    for key in ("notify", "r", "anterior"):
        with pytest.raises(ValueError, match=rf"additional_parameters\['{key}'\].*needs a value"):
            OarPoolExecutor(folder=folder, additional_parameters={key: True})


@pytest.mark.parametrize("key", ["t", "type"])
def test_an_oar_job_type_given_as_an_additional_parameter_is_checked_as_job_types_are(folder, key):
    # OAR's admission rules paste the value of inner= into SQL
    with pytest.raises(ValueError, match=rf"additional_parameters\['{key}'\]"):
        OarPoolExecutor(folder=folder, additional_parameters={key: "inner=1 OR 1=1"})
    _, arguments = oar_rendering(folder, additional_parameters={key: "besteffort"})
    assert arguments[arguments.index(f"-{key}" if key == "t" else "--type") + 1] == "besteffort"


def test_the_oar_memory_property_must_be_a_property_name(folder):
    with pytest.raises(ValueError, match="memory_property='1=1--'"):
        OarPoolExecutor(folder=folder, mem_gb=64, memory_property="1=1--")
    _, arguments = oar_rendering(folder, mem_gb=2, memory_property="mem_mb")
    assert arguments[arguments.index("-p") + 1] == "mem_mb >= 2048"


# ------------------------------------------------------------------- values that would only fail later
@pytest.mark.parametrize(
    "executor, parameters, named",
    [
        (SlurmPoolExecutor, {"nodes": None}, "nodes"),
        (SlurmPoolExecutor, {"nodes": True}, "nodes"),  # equal to the default 1, but not a number of nodes
        (OarPoolExecutor, {"checkpoint_seconds": 90.0}, "checkpoint_seconds"),
        (SlurmPoolExecutor, {"tasks_per_node": None}, "tasks_per_node"),
        (SlurmPoolExecutor, {"cpus_per_task": None}, "cpus_per_task"),
        (SlurmPoolExecutor, {"checkpoint_seconds": None}, "checkpoint_seconds"),
        (SlurmPoolExecutor, {"max_array_size": 0}, "max_array_size"),
        (SlurmPoolExecutor, {"max_array_size": "10"}, "max_array_size"),
        (OarPoolExecutor, {"nodes": None}, "nodes"),
        (OarPoolExecutor, {"checkpoint_seconds": None}, "checkpoint_seconds"),
        (LocalPoolExecutor, {"tasks_per_node": None}, "tasks_per_node"),
        (LocalPoolExecutor, {"max_resubmissions": -1}, "max_resubmissions"),
        (LocalPoolExecutor, {"warn_pickle_bytes": "x"}, "warn_pickle_bytes"),
    ],
)
def test_a_value_with_no_meaning_is_refused_naming_it_rather_than_failing_later(folder, executor, parameters, named):
    with pytest.raises(ValueError, match=named):
        executor(folder=folder, **parameters)
    assert nothing_written(folder)


@pytest.mark.parametrize("executor", [*EXECUTORS, LocalPoolExecutor])
@pytest.mark.parametrize(
    "name, value, error",
    [
        ("folder", 3, TypeError),
        ("folder", b"/tmp/x", TypeError),
        ("python", 3, TypeError),
        ("python", b"python3", TypeError),
        ("python", "/usr/bin/py\x00thon3", ValueError),
        ("python", "python3\nrm -rf ~", ValueError),
    ],
)
def test_a_folder_or_interpreter_that_is_not_a_text_path_is_refused_naming_it(folder, executor, name, value, error):
    arguments = {"folder": folder, name: value}
    with pytest.raises(error, match=f"{name}"):
        executor(**arguments)
    assert nothing_written(folder)


def test_the_local_folder_refuses_control_characters_and_takes_what_a_script_could_not_hold(tmp_path):
    with pytest.raises(ValueError, match="folder="):
        LocalPoolExecutor(folder=str(tmp_path / "a\nb"))
    assert not os.path.exists(tmp_path / "a\nb")
    # no job script reads a local folder: quotes are fine there
    with LocalPoolExecutor(1, folder=tmp_path / 'o\'brien "runs"') as executor:
        assert executor.submit(abs, -3).result(timeout=60) == 3


# ---------------------------------------------------------------------------------------------- real clusters
@pytest.mark.slurm
def test_slurm_runs_a_job_whose_folder_holds_a_space_a_semicolon_and_a_percent_sign(tmp_path):
    require_command("sbatch")
    folder = tmp_path / "a b;c%j"
    with SlurmPoolExecutor(folder=str(folder)) as executor:
        future = executor.submit(tasks.print_and_return, "out", "err", 5)  # output: its logs are kept
        assert future.result(timeout=120) == 5
    logs = os.listdir(folder / "logs")
    assert f"{future.job_id}.out" in logs and f"{future.job_id}.err" in logs, logs


@pytest.mark.oar
def test_oar_runs_a_job_whose_folder_holds_a_space_a_semicolon_and_a_plus(tmp_path):
    require_command("oarsub")
    folder = tmp_path / "a b;c+d"
    with OarPoolExecutor(folder=str(folder), walltime="0:05:00") as executor:
        future = executor.submit(tasks.print_and_return, "out", "err", 5)  # output: its logs are kept
        assert future.result(timeout=120) == 5
    assert f"{future.job_id}.out" in os.listdir(folder / "logs")


SUBMIT_WITHOUT_PWD = """
import operator, sys
from oarfutures import OarPoolExecutor
with OarPoolExecutor(folder=sys.argv[1], walltime="0:05:00") as executor:
    print(executor.submit(operator.add, 20, 22).result(timeout=120))
"""


@pytest.mark.oar
def test_oar_submission_works_without_pwd_in_the_environment(tmp_path):
    """Cron, ``env -i`` and some launchers give no $PWD, from which oarsub would take the launching folder."""
    require_command("oarsub")
    environment = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/")}
    done = subprocess.run(
        [sys.executable, "-c", SUBMIT_WITHOUT_PWD, str(tmp_path / "jobs")],
        capture_output=True,
        text=True,
        timeout=180,
        env=environment,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "42"
