"""The error tree: unique codes checked at definition, one status table, pickling."""

import pickle

import pytest

from kubeml import errors


def _classes() -> list[type[errors.KubeMLError]]:
    found, stack = [], [errors.KubeMLError]
    while stack:
        cls = stack.pop()
        if cls.__module__ == errors.__name__:
            found.append(cls)
        stack.extend(cls.__subclasses__())
    return found


@pytest.mark.parametrize("cls", [errors.FunctionError, errors.NotFoundError, errors.ConflictError])
def test_errors_survive_pickling_with_their_details(cls):
    err = cls("it broke", details="Traceback ...")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls and str(back) == "it broke" and back.details == "Traceback ..."


def test_every_class_has_its_own_code_and_exactly_one_status():
    classes = _classes()
    codes = [cls.__dict__["code"] for cls in classes]
    assert len(set(codes)) == len(classes)
    assert set(errors.HTTP_STATUS) == set(classes)  # a dict: one status per class
    for cls in classes:
        assert errors.error_class(cls.code) is (None if cls is errors.KubeMLError else cls)
        assert cls("x").http_status == errors.HTTP_STATUS[cls]


@pytest.mark.parametrize(
    ("cls", "status"),
    [
        (errors.ConflictError, 409),
        (errors.AlreadyExistsError, 409),
        (errors.InvalidInputError, 422),
        (errors.PayloadTooLargeError, 413),
        (errors.NotFoundError, 404),
        (errors.BackendError, 503),
        (errors.InternalError, 500),
    ],
)
def test_statuses_of_the_table(cls, status):
    assert errors.status_of(cls) == status


def test_a_bare_status_maps_back_to_the_first_class_listed_for_it():
    assert errors.error_for_status(409) is errors.ConflictError
    assert errors.error_for_status(422) is errors.InvalidInputError
    assert errors.error_for_status(503) is errors.ServerUnavailableError
    assert errors.error_for_status(500) is errors.InternalError
    assert errors.error_for_status(418) is None
    assert errors.error_class("no-such-code") is None


def test_a_duplicate_code_is_refused_when_the_class_is_defined():
    with pytest.raises(TypeError, match="'not_found' is taken by NotFoundError"):

        class Again(errors.KubeMLError):
            code = "not_found"

    with pytest.raises(TypeError, match="'kubeml_error' is taken by KubeMLError"):

        class Base(errors.KubeMLError):
            code = "kubeml_error"


def test_a_missing_code_is_refused_when_the_class_is_defined():
    with pytest.raises(TypeError, match="Inherits must define its own `code`"):

        class Inherits(errors.NotFoundError):  # would share not_found with its parent
            pass


def test_a_subclass_defined_elsewhere_gets_its_parents_status():
    class GoneError(errors.NotFoundError):
        code = "test_gone"

    assert GoneError("x").http_status == 404
    assert errors.error_class("test_gone") is GoneError
