"""Readers on small files of each real format, their errors, and the download."""
import gzip
import hashlib
import io
import time
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest

from vaecf.data import download, readers, textio
from vaecf.data.types import DataError

EMBEDDED = Path(__file__).resolve().parents[1] / 'vaecf' / 'datasets' / 'ml-latest-small'


def write(path: Path, text: str, *, gz: bool = False, encoding='utf-8') -> Path:
  data = text.encode(encoding)
  path.write_bytes(gzip.compress(data) if gz else data)
  return path


def check(inter, users, items, values):
  np.testing.assert_array_equal(inter.users, users)
  np.testing.assert_array_equal(inter.items, items)
  np.testing.assert_array_equal(inter.values, np.asarray(values, np.float32))
  assert inter.values.dtype == np.float32


# ---------------------------------------------------------------- the formats

def test_movielens_csv_crlf(tmp_path):
  f = write(tmp_path / 'ratings.csv', 'userId,movieId,rating,timestamp\r\n'
            '1,31,2.5,1260759144\r\n1,1029,3.0,1260759179\r\n7,2,0.5,1\r\n')
  inter = readers.read_movielens_csv(f)
  check(inter, [1, 1, 7], [31, 1029, 2], [2.5, 3.0, 0.5])
  assert inter.users.dtype == np.int64 and inter.items.dtype == np.int64


def test_movielens_csv_without_final_newline(tmp_path):
  f = write(tmp_path / 'ratings.csv', 'userId,movieId,rating,timestamp\n5,6,4.0,1')
  check(readers.read_movielens_csv(f), [5], [6], [4.0])


def test_movielens_dat_four_fields(tmp_path):
  f = write(tmp_path / 'ratings.dat',
            '1::1193::5::978300760\n1::661::3::978302109\n2::1357::5::978298709\n')
  check(readers.read_movielens_dat(f), [1, 1, 2], [1193, 661, 1357], [5, 3, 5])


def test_movielens_dat_gz_without_timestamps(tmp_path):
  f = write(tmp_path / 'ratings_without_timestamps.dat.gz',
            '1::1193::5\n1::661::3\n6040::1097::4\n', gz=True)
  check(readers.read_movielens_dat(f), [1, 1, 6040], [1193, 661, 1097], [5, 3, 4])


def test_movielens_100k(tmp_path):
  f = write(tmp_path / 'u.data', '196\t242\t3\t881250949\n186\t302\t3\t891717742\n'
            '22\t377\t1\t878887116\n')
  check(readers.read_movielens_100k(f), [196, 186, 22], [242, 302, 377], [3, 3, 1])


NETFLIX = '1:\n1488844,3,2005-09-06\n822109,5,2005-05-13\n2:\n2059652,4,2005-09-05\n'


def test_netflix_combined_file(tmp_path):
  f = write(tmp_path / 'combined_data_1.txt', NETFLIX)
  check(readers.read_netflix(f), [1488844, 822109, 2059652], [1, 1, 2], [3, 5, 4])


def test_netflix_training_set_folder(tmp_path):
  folder = tmp_path / 'training_set'
  folder.mkdir()
  write(folder / 'mv_0000002.txt', '2:\r\n30878,4,2005-12-26\r\n')
  write(folder / 'mv_0000001.txt', '1:\n1488844,3,2005-09-06\n822109,5,2005-05-13\n')
  inter = readers.read_netflix(tmp_path)  # finds training_set/ inside
  check(inter, [1488844, 822109, 30878], [1, 1, 2], [3, 5, 4])
  check(readers.read_interactions(folder), [1488844, 822109, 30878], [1, 1, 2], [3, 5, 4])


def test_netflix_folder_of_combined_files(tmp_path):
  write(tmp_path / 'combined_data_2.txt', '3:\n7,1,2005-01-01\n')
  write(tmp_path / 'combined_data_1.txt', NETFLIX)
  inter = readers.read_interactions(tmp_path)
  check(inter, [1488844, 822109, 2059652, 7], [1, 1, 2, 3], [3, 5, 4, 1])


def test_netflix_movie_carries_over_blocks(tmp_path, monkeypatch):
  monkeypatch.setattr(textio, '_CHUNK', 16)  # many blocks, headers in early ones
  f = write(tmp_path / 'combined_data_1.txt', NETFLIX + '2059653,2,2005-09-05\n')
  check(readers.read_netflix(f), [1488844, 822109, 2059652, 2059653], [1, 1, 2, 2],
        [3, 5, 4, 2])


def test_msd_triplets_string_ids(tmp_path):
  f = write(tmp_path / 'train_triplets.txt',
            'b80344d063b5ccb3212f76538f3d9e43d87dca9e\tSOAKIMP12A8C130995\t1\n'
            'b80344d063b5ccb3212f76538f3d9e43d87dca9e\tSOAPDEY12A81C210A9\t12\n'
            '85c1f87fea955d09b4bec2e36aee110927aedf9a\tSOAKIMP12A8C130995\t2\n')
  inter = readers.read_msd_triplets(f)
  assert inter.users.dtype.kind == 'U' and inter.items.dtype.kind == 'U'
  check(inter, ['b80344d063b5ccb3212f76538f3d9e43d87dca9e'] * 2
        + ['85c1f87fea955d09b4bec2e36aee110927aedf9a'],
        ['SOAKIMP12A8C130995', 'SOAPDEY12A81C210A9', 'SOAKIMP12A8C130995'], [1, 12, 2])


def test_delimited_by_name_and_number(tmp_path):
  f = write(tmp_path / 'user_artists.dat', 'userID\tartistID\tweight\r\n2\t51\t13883\r\n'
            '2\t52\t11690\r\n')
  check(readers.read_delimited(f, user_col='userID', item_col='artistID',
                               value_col='weight', delimiter='\t'),
        [2, 2], [51, 52], [13883, 11690])
  inter = readers.read_delimited(f, user_col=1, item_col=0, delimiter='\t')  # inferred header
  check(inter, [51, 52], [2, 2], [1, 1])
  assert inter.users.dtype == np.int64


def test_delimited_string_ids_and_no_header(tmp_path):
  f = write(tmp_path / 'clicks.txt', 'alice;42;1.5\nbob;x7;2\n')
  inter = readers.read_delimited(f, user_col=0, item_col=1, value_col=2, delimiter=';')
  check(inter, ['alice', 'bob'], ['42', 'x7'], [1.5, 2.0])
  assert inter.items.dtype.kind == 'U'
  f = write(tmp_path / 'plain.txt', '1::2\n3::4\n')
  check(readers.read_delimited(f, user_col=0, item_col=1, delimiter='::', header=False),
        [1, 3], [2, 4], [1, 1])


def test_delimited_ids_stay_text_if_any_is_not_an_integer(tmp_path, monkeypatch):
  monkeypatch.setattr(textio, '_CHUNK', 8)  # the string id sits in a later block
  f = write(tmp_path / 'x.tsv', '007\t1\n8\t2\n9\t3\nabc\t4\n')
  inter = readers.read_delimited(f, user_col=0, item_col=1, delimiter='\t')
  check(inter, ['007', '8', '9', 'abc'], [1, 2, 3, 4], [1, 1, 1, 1])
  assert inter.items.dtype == np.int64


def test_delimited_bad_value_and_field_count(tmp_path):
  f = write(tmp_path / 'x.csv', 'user,item,weight\nu1,i1,2\nu2,i2,heavy\n')
  with pytest.raises(DataError, match=r"x\.csv, line 3: weight 'heavy' is not a finite number"):
    readers.read_delimited(f, user_col='user', item_col='item', value_col='weight')
  f = write(tmp_path / 'y.csv', 'u1,i1,2\nu2,i2\n')
  with pytest.raises(DataError, match=r"y\.csv, line 2: expected 3 fields \(column 0, column 1, "
                     r"column 2\) separated by ','"):
    readers.read_delimited(f, user_col=0, item_col=1)


def test_delimited_unknown_column(tmp_path):
  f = write(tmp_path / 'x.csv', 'a,b\n1,2\n')
  with pytest.raises(DataError, match=r"no column named 'user'.*\['a', 'b'\]"):
    readers.read_delimited(f, user_col='user', item_col='b')
  with pytest.raises(DataError, match='no column 5'):
    readers.read_delimited(f, user_col=0, item_col=5)


def test_blank_lines_are_skipped(tmp_path):
  f = write(tmp_path / 'u.data', '\n1\t2\t3\t4\n\n\n5\t6\t7\t8\n\n')
  check(readers.read_movielens_100k(f), [1, 5], [2, 6], [3, 7])


# ------------------------------------------------------------------- dispatch

@pytest.mark.parametrize('name,text,gz', [
    ('ratings.csv', 'userId,movieId,rating,timestamp\n1,2,3.5,4\n', False),
    ('ratings.dat', '1::2::3.5::4\n', False),
    ('ratings_without_timestamps.dat.gz', '1::2::3.5\n', True),
    ('u.data', '1\t2\t3.5\t4\n', False),
    ('combined_data_1.txt', '2:\n1,3.5,2005-01-01\n', False),
    ('train_triplets.txt', '1\t2\t3.5\n', False),
])
def test_auto_format_by_file_and_folder(tmp_path, name, text, gz):
  f = write(tmp_path / name, text, gz=gz)
  for path in (f, tmp_path):
    inter = readers.read_interactions(path)
    assert [str(inter.users[0]), str(inter.items[0]), inter.values[0]] == ['1', '2', 3.5]


def test_auto_prefers_the_real_download_name(tmp_path):
  write(tmp_path / 'ratings_without_timestamps.dat.gz', '9::9::1\n', gz=True)
  write(tmp_path / 'ratings.dat', '1::2::3::4\n')
  assert readers.read_interactions(tmp_path).users.tolist() == [1]
  assert readers.read_interactions(tmp_path, 'movielens_dat').users.tolist() == [1]


def test_dispatch_errors(tmp_path):
  write(tmp_path / 'notes.txt', 'hello\n')
  with pytest.raises(DataError, match=r'no recognisable ratings file.*ratings\.csv.*u\.data'):
    readers.read_interactions(tmp_path)
  with pytest.raises(DataError, match=r"unknown format 'parquet'.*movielens_dat"):
    readers.read_interactions(tmp_path / 'notes.txt', 'parquet')
  with pytest.raises(DataError, match='not found'):
    readers.read_interactions(tmp_path / 'nothing_here')
  with pytest.raises(TypeError, match='takes no options'):
    readers.read_interactions(tmp_path / 'notes.txt', 'msd', user_col=0)
  with pytest.raises(DataError, match=r'no movielens_dat ratings file in this folder.*ml-1m\.zip'):
    readers.read_movielens_dat(tmp_path)


# ----------------------------------------------------------------- bad input

def test_missing_file_says_what_to_put_where(tmp_path):
  target = tmp_path / 'ml-1m' / 'ratings.dat'
  with pytest.raises(DataError) as e:
    readers.read_movielens_dat(target)
  assert str(target) in str(e.value) and 'ml-1m.zip' in str(e.value)
  with pytest.raises(DataError, match=r'file not found.*u\.data.*ml-100k\.zip'):
    readers.read_movielens_100k(tmp_path / 'u.data')
  with pytest.raises(DataError, match=r'train_triplets\.txt'):
    readers.read_msd_triplets(tmp_path / 'train_triplets.txt')


@pytest.mark.parametrize('name,text,gz', [
    ('ratings.csv', '', False), ('ratings.dat.gz', '', True), ('u.data', '\n\n', False),
    ('combined_data_1.txt', '', False), ('train_triplets.txt', '', False),
])
def test_empty_file(tmp_path, name, text, gz):
  f = write(tmp_path / name, text, gz=gz)
  with pytest.raises(DataError, match=r'no ratings in the file \(it is empty'):
    readers.read_interactions(f)


def test_header_only_csv(tmp_path):
  f = write(tmp_path / 'ratings.csv', 'userId,movieId,rating,timestamp\r\n')
  with pytest.raises(DataError, match='empty apart from its header'):
    readers.read_movielens_csv(f)


def test_wrong_header_csv(tmp_path):
  f = write(tmp_path / 'ratings.csv', '1,2,3.0,4\n')
  with pytest.raises(DataError, match=r"line 1: expected the header 'userId,movieId"):
    readers.read_movielens_csv(f)


@pytest.mark.parametrize('reader,name,text,match', [
    ('read_movielens_csv', 'ratings.csv', 'userId,movieId,rating,timestamp\r\n1,2,3.0,4\r\n'
     '1,2,3.0\r\n', r"ratings\.csv, line 3: expected 4 fields \(userId, movieId, rating, timestamp\) "
     r"separated by ',': '1,2,3\.0'"),
    ('read_movielens_dat', 'ratings.dat', '1::2::3::4\n1::2::3::4::5\n',
     r"ratings\.dat, line 2: expected 4 fields \(UserID.*'1::2::3::4::5'"),
    ('read_movielens_100k', 'u.data', '1\t2\t3\t4\n5 6 7 8\n',
     r"u\.data, line 2: expected 4 fields.*'5 6 7 8'"),
    ('read_netflix', 'combined_data_1.txt', '1:\n1,2,2005-01-01\n1,2\n',
     r"combined_data_1\.txt, line 3: expected 'MovieID:' or 'CustomerID,Rating,Date': '1,2'"),
    ('read_msd_triplets', 'train_triplets.txt', 'u\ts\t1\nu\ts\n',
     r"train_triplets\.txt, line 2: expected 3 fields.*'u\\ts'"),
])
def test_wrong_field_count(tmp_path, reader, name, text, match):
  f = write(tmp_path / name, text)
  with pytest.raises(DataError, match=match):
    getattr(readers, reader)(f)


@pytest.mark.parametrize('reader,name,text,match', [
    ('read_movielens_csv', 'ratings.csv', 'userId,movieId,rating,timestamp\n1,2,3,4\n'
     'x1,2,3,4\n', r"line 3: userId 'x1' is not an integer: 'x1,2,3,4'"),
    ('read_movielens_dat', 'ratings.dat.gz', '1::2::3\n1::2.5::3\n',
     r"ratings\.dat\.gz, line 2: MovieID '2\.5' is not an integer: '1::2\.5::3'"),
    ('read_movielens_100k', 'u.data', '1\t2\t3\t4\n1\t2\tfive\t4\n',
     r"line 2: rating 'five' is not a finite number"),
    ('read_netflix', 'combined_data_1.txt', 'A:\n1,2,2005-01-01\n',
     r"line 1: MovieID 'A' is not an integer: 'A:'"),
    ('read_netflix', 'combined_data_1.txt', '1:\n1,nan,2005-01-01\n',
     r"line 2: Rating 'nan' is not a finite number"),
    ('read_msd_triplets', 'train_triplets.txt', 'u\ts\t1\nu\ts\tlots\n',
     r"line 2: play count 'lots' is not a finite number"),
])
def test_non_numeric_fields(tmp_path, reader, name, text, match):
  f = write(tmp_path / name, text, gz=name.endswith('.gz'))
  with pytest.raises(DataError, match=match):
    getattr(readers, reader)(f)


def test_line_numbers_count_across_blocks(tmp_path, monkeypatch):
  monkeypatch.setattr(textio, '_CHUNK', 8)
  f = write(tmp_path / 'ratings.csv', 'userId,movieId,rating,timestamp\n'
            + '1,2,3.0,4\n' * 20 + '1,2,oops,4\n')
  with pytest.raises(DataError, match=r"line 22: rating 'oops'"):
    readers.read_movielens_csv(f)
  monkeypatch.setattr(textio, '_CHUNK', 1 << 20)
  f = write(tmp_path / 'ratings.csv', 'userId,movieId,rating,timestamp\n'
            + '1,2,3.0,4\n' * 20)
  assert len(readers.read_movielens_csv(f)) == 20


def test_netflix_rating_before_movie(tmp_path):
  f = write(tmp_path / 'combined_data_1.txt', '1,2,2005-01-01\n1:\n')
  with pytest.raises(DataError, match=r"line 1: rating before any 'MovieID:' line"):
    readers.read_netflix(f)


def test_corrupt_gzip(tmp_path):
  f = tmp_path / 'ratings.dat.gz'
  f.write_bytes(gzip.compress(b'1::2::3\n' * 1000)[:-30])
  with pytest.raises(DataError, match='cannot read the file'):
    readers.read_movielens_dat(f)


# --------------------------------------------------------------------- titles

def test_titles_csv_dat_and_u_item(tmp_path):
  write(tmp_path / 'movies.csv', 'movieId,title,genres\r\n1,Toy Story (1995),Animation\r\n'
        '11,"American President, The (1995)",Comedy|Drama|Romance\r\n')
  assert readers.read_item_titles(tmp_path) == {
      1: 'Toy Story (1995)', 11: 'American President, The (1995)'}
  f = write(tmp_path / 'movies.dat', '1::Toy Story (1995)::Animation\n'
            '3::Misérables, Les (1995)::Drama\n', encoding='latin-1')
  assert readers.read_item_titles(f) == {1: 'Toy Story (1995)', 3: 'Misérables, Les (1995)'}
  f = write(tmp_path / 'u.item', '1|Toy Story (1995)|01-Jan-1995||http://x|0|0\n'
            '4|Café (1996)|01-Jan-1996||http://y|0|1\n', encoding='latin-1')
  assert readers.read_item_titles(f) == {1: 'Toy Story (1995)', 4: 'Café (1996)'}


def test_titles_missing_and_malformed(tmp_path):
  assert readers.read_item_titles(tmp_path) == {}
  assert readers.read_item_titles(tmp_path / 'movies.csv') == {}
  f = write(tmp_path / 'movies.dat', '1::Toy Story (1995)::Animation\nbroken line\n')
  with pytest.raises(DataError, match=r'movies\.dat, line 2'):
    readers.read_item_titles(f)


# ----------------------------------------------------------- real data files

def test_embedded_ml_latest_small():
  if not (EMBEDDED / 'ratings.csv').exists():
    pytest.skip(f'no embedded copy at {EMBEDDED}')
  inter = readers.read_interactions(EMBEDDED)
  assert (len(inter), len(np.unique(inter.users)), len(np.unique(inter.items))) == (
      100836, 610, 9724)


@pytest.mark.shared
def test_real_ml_1m_gz(shared_data):
  start = time.perf_counter()
  inter = readers.read_interactions(shared_data / 'ml-1m')
  seconds = time.perf_counter() - start
  assert (len(inter), len(np.unique(inter.users)), len(np.unique(inter.items))) == (
      1000209, 6040, 3706)
  check(inter.take(slice(0, 3)), [1, 1, 1], [1193, 661, 914], [5, 3, 3])
  assert np.bincount(inter.values.astype(int))[1:].tolist() == [
      56174, 107557, 261197, 348971, 226310]
  assert seconds < 20, f'reading ML-1M took {seconds:.1f}s'


@pytest.mark.shared
def test_real_ml_100k(shared_data):
  inter = readers.read_interactions(shared_data / 'ml-100k' / 'u.data')
  assert (len(inter), len(np.unique(inter.users)), len(np.unique(inter.items))) == (
      100000, 943, 1682)
  check(inter.take(slice(0, 2)), [196, 186], [242, 302], [3, 3])


@pytest.mark.shared
def test_real_ml_latest_small(shared_data):
  inter = readers.read_interactions(shared_data / 'ml-latest-small')
  assert (len(inter), len(np.unique(inter.users)), len(np.unique(inter.items))) == (
      100836, 610, 9724)
  check(inter.take(slice(0, 2)), [1, 1], [1, 3], [4.0, 4.0])


@pytest.mark.shared
def test_real_titles(shared_data):
  ml1m = readers.read_item_titles(shared_data / 'ml-1m')
  assert len(ml1m) == 3883 and ml1m[1] == 'Toy Story (1995)'
  assert readers.read_item_titles(shared_data / 'ml-100k')[1] == 'Toy Story (1995)'
  small = readers.read_item_titles(shared_data / 'ml-latest-small')
  assert len(small) == 9742 and small[1] == 'Toy Story (1995)'


@pytest.mark.shared
def test_real_lastfm_delimited(shared_data):
  inter = readers.read_delimited(
      shared_data / 'hetrec2011-lastfm-2k' / 'user_artists.dat', user_col='userID',
      item_col='artistID', value_col='weight', delimiter='\t')
  assert (len(inter), len(np.unique(inter.users)), len(np.unique(inter.items))) == (
      92834, 1892, 17632)


# ------------------------------------------------------------------- download

def make_zip(name: str) -> bytes:
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, 'w') as z:
    z.writestr(f'{name}/u.data', '1\t2\t3\t4\n')
    z.writestr(f'{name}/README', 'test')
  return buf.getvalue()


class FakeOpener:
  """Serves `payload` for any URL and remembers what was asked."""

  def __init__(self, payload: bytes):
    self.payload, self.urls = payload, []

  def __call__(self, url, timeout=None):
    self.urls.append(url)
    return io.BytesIO(self.payload)


def test_fetch_downloads_checks_and_unzips(tmp_path, monkeypatch):
  payload = make_zip('ml-100k')
  monkeypatch.setitem(download.CHECKSUMS, 'ml-100k',
                      (len(payload), hashlib.sha256(payload).hexdigest()))
  opener = FakeOpener(payload)
  folder = download.fetch_movielens('ml-100k', tmp_path / 'cache', urlopen=opener)
  assert folder == (tmp_path / 'cache' / 'ml-100k').resolve()
  assert opener.urls == ['https://files.grouplens.org/datasets/movielens/ml-100k.zip']
  check(readers.read_interactions(folder), [1], [2], [3])
  assert sorted(p.name for p in (tmp_path / 'cache').iterdir()) == ['ml-100k']  # no leftovers
  # Cached: no second download.
  assert download.fetch_movielens('ml-100k', tmp_path / 'cache', urlopen=opener) == folder
  assert len(opener.urls) == 1


def test_fetch_without_known_checksum(tmp_path, monkeypatch):
  monkeypatch.setitem(download.CHECKSUMS, 'ml-1m', (None, None))
  folder = download.fetch_movielens('ml-1m', tmp_path, urlopen=FakeOpener(make_zip('ml-1m')))
  assert (folder / 'u.data').is_file()


def test_fetch_checksum_mismatch(tmp_path):
  with pytest.raises(DataError, match=r'ml-1m\.zip: the download does not match'):
    download.fetch_movielens('ml-1m', tmp_path, urlopen=FakeOpener(make_zip('ml-1m')))
  assert list(tmp_path.iterdir()) == []  # the bad download is not kept


def test_fetch_bad_zip(tmp_path, monkeypatch):
  monkeypatch.setitem(download.CHECKSUMS, 'ml-20m', (None, None))
  with pytest.raises(DataError, match='not a valid zip'):
    download.fetch_movielens('ml-20m', tmp_path, urlopen=FakeOpener(b'<html>'))
  with pytest.raises(DataError, match='has no folder ml-20m/'):
    download.fetch_movielens('ml-20m', tmp_path, urlopen=FakeOpener(make_zip('other')))


def test_fetch_offline_says_what_to_do(tmp_path):
  def offline(url, timeout=None):
    raise urllib.error.URLError('[Errno -3] Temporary failure in name resolution')
  cache = tmp_path / 'downloads'
  with pytest.raises(DataError) as e:
    download.fetch_movielens('ml-20m', cache, urlopen=offline)
  msg = str(e.value)
  assert 'https://files.grouplens.org/datasets/movielens/ml-20m.zip' in msg
  assert f'unzip it into {cache.resolve()}' in msg
  assert str(cache.resolve() / 'ml-20m') in msg

  def timeout(url, timeout=None):
    raise TimeoutError('timed out')
  with pytest.raises(DataError, match='cannot download .*ml-1m.zip'):
    download.fetch_movielens('ml-1m', cache, urlopen=timeout)


def test_fetch_unknown_name(tmp_path):
  with pytest.raises(DataError, match=r"unknown MovieLens dataset 'ml-5m'.*ml-100k"):
    download.fetch_movielens('ml-5m', tmp_path, urlopen=FakeOpener(b''))


def test_a_tab_separated_file_read_with_commas_names_the_delimiter(tmp_path):
  f = tmp_path / 'plays.tsv'
  f.write_text('user\titem\nu1\ti1\nu1\ti2\n')
  with pytest.raises(DataError, match=r"separated by '\\t': pass --config.data.delimiter"):
    readers.read_delimited(f, user_col='user', item_col='item')
  got = readers.read_delimited(f, user_col='user', item_col='item', delimiter='\t')
  assert len(got.users) == 2


def test_ids_that_name_one_number_two_ways_are_warned_about(tmp_path, caplog):
  f = tmp_path / 'clicks.csv'
  f.write_text('user,item\nu1,1\nu1,1.0\nu2,2.5\nu2,x\n')
  with caplog.at_level('WARNING', logger='vaecf.data.readers'):
    got = readers.read_delimited(f, user_col='user', item_col='item')
  assert len(np.unique(got.items)) == 4  # still two items: ids are text
  assert any("'1' and '1.0'" in r.getMessage() for r in caplog.records), caplog.text
  caplog.clear()
  f.write_text('user,item\nu1,1\nu1,2\nu2,a\n')
  with caplog.at_level('WARNING', logger='vaecf.data.readers'):
    readers.read_delimited(f, user_col='user', item_col='item')
  assert not caplog.records
