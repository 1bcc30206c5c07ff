"""Synthetic Korean PII sentences for benchmarks/safety_pii.py, generated from a seed (never stored).

Positives put valid-looking identifiers into everyday Korean sentences, spelled the ways people
type them: hyphens, spaces, dots, nothing, full-width digits, 'ㅡ' or en dashes, +82 and (0),
brackets, particles glued on. Checksums are right where the kind has one (python-stdnum checks
RRNs, BRNs and Luhn), and a quarter of registration numbers carry the random serials issued since
October 2020. Negatives are full of numbers that are not PII: years, dates, prices, order and
tracking numbers, versions, scores, times, ISBNs, company hotlines.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from datetime import date, timedelta

from stdnum import luhn
from stdnum.kr import brn as stdnum_brn
from stdnum.kr import rrn as stdnum_rrn

FULL_WIDTH = str.maketrans({c: chr(ord(c) + 0xFEE0) for c in "0123456789-."})


@dataclass(frozen=True)
class Sample:
    text: str
    spans: tuple[tuple[str, int, int], ...]  # gold (kind, start, end); empty for a negative


def _d(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def _join(rng: random.Random, groups: list[str], seps: list[str]) -> str:
    sep = rng.choice(seps)
    spelled = sep.join(groups)
    return spelled.translate(FULL_WIDTH) if rng.random() < 0.08 else spelled


def registration(rng: random.Random, foreigner: bool) -> str:
    born = date(1940, 1, 1) + timedelta(days=rng.randrange(365 * 83))
    sex = rng.choice("12") if born.year < 2000 else rng.choice("34")
    if foreigner:
        sex = str(int(sex) + 4)
    body = born.strftime("%y%m%d") + sex + f"{rng.randrange(97):02d}" + _d(rng, 3)
    if rng.random() < 0.25:  # issued since October 2020: random serial, no checksum
        number = body + _d(rng, 1)
    elif foreigner:
        total = sum(int(c) * w for c, w in zip(body, (2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5), strict=True))
        number = body + str((13 - total % 11) % 10)
    else:
        number = body + stdnum_rrn.calc_check_digit(body)
        assert stdnum_rrn.is_valid(number)
    return _join(rng, [number[:6], number[6:]], ["-", "-", "-", " ", "", " - ", "–"])


def mobile(rng: random.Random) -> str:
    prefix = "010" if rng.random() < 0.85 else rng.choice(["011", "016", "017", "018", "019"])
    middle = str(rng.randint(2, 9)) + _d(rng, 3 if prefix == "010" or rng.random() < 0.5 else 2)
    last = _d(rng, 4)
    if rng.random() < 0.2:
        intl = rng.choice(["+82 ", "+82-", "+82", "+82 (0)", "+82 0"])
        return intl + _join(rng, [prefix[1:], middle, last], ["-", " ", ""])
    if rng.random() < 0.1:
        return rng.choice([f"({prefix}) {middle}-{last}", f"{prefix}){middle}-{last}"])
    return _join(rng, [prefix, middle, last], ["-", "-", "-", " ", ".", "", " - ", "ㅡ", "–"])


def landline(rng: random.Random) -> str:
    area = rng.choice(["02", "02", "02", "031", "032", "033", "041", "042", "043", "044", "051", "052",
                       "053", "054", "055", "061", "062", "063", "064", "070", "070", "0505"])
    exchange = str(rng.randint(2, 9)) + _d(rng, rng.choice([2, 3]))
    last = _d(rng, 4)
    if rng.random() < 0.12:
        return rng.choice([f"+82 {area[1:]}-{exchange}-{last}", f"+82-{area[1:]}-{exchange}-{last}"])
    if rng.random() < 0.1:
        return f"({area}) {exchange}-{last}" if rng.random() < 0.5 else f"{area}){exchange}-{last}"
    return _join(rng, [area, exchange, last], ["-", "-", "-", " ", ".", "", " - "])


def email(rng: random.Random) -> str:
    family = rng.choice(["kim", "lee", "park", "choi", "jung", "kang", "cho", "yoon", "jang", "lim", "han"])
    given = rng.choice(["minji", "jiho", "seoyeon", "hyunwoo", "sua", "dohyun", "yuna", "jisoo", "gd"])
    local = rng.choice([f"{given}.{family}", f"{family}_{given}{rng.randint(70, 99)}", f"{family}{given}",
                        f"{given}{rng.randint(1, 999)}", f"{family}-{given}", f"{given}+news"])
    domain = rng.choice(["naver.com", "gmail.com", "daum.net", "hanmail.net", "kakao.com", "nate.com",
                         "changjak.co.kr", "korea.ac.kr", "snu.ac.kr", "example.org"])
    address = f"{local}@{domain}"
    return address.upper() if rng.random() < 0.05 else address


def card(rng: random.Random) -> str:
    prefix, length = rng.choice([("4", 16), ("4", 16), (str(rng.randint(51, 55)), 16),
                                 (str(rng.randint(2221, 2720)), 16), (rng.choice(["34", "37"]), 15),
                                 (str(rng.randint(3528, 3589)), 16), ("9410", 16), ("62", 16)])
    body = prefix + _d(rng, length - len(prefix) - 1)
    number = body + luhn.calc_check_digit(body)
    assert luhn.is_valid(number)
    if length == 15:
        groups = [number[:4], number[4:10], number[10:]]
    else:
        groups = [number[i:i + 4] for i in (0, 4, 8, 12)]
    return _join(rng, groups, ["-", "-", " ", " ", ""])


ACCOUNT_LAYOUTS = {"국민은행": (6, 2, 6), "KB국민": (6, 2, 6), "신한은행": (3, 3, 6), "우리은행": (4, 3, 6),
                   "하나은행": (3, 6, 5), "농협": (3, 4, 4, 2), "NH농협": (3, 4, 4, 2), "IBK기업은행": (3, 6, 2, 3),
                   "카카오뱅크": (4, 2, 7), "토스뱅크": (4, 4, 4), "케이뱅크": (3, 3, 6), "SC제일은행": (3, 2, 6),
                   "우체국": (6, 2, 6), "새마을금고": (4, 4, 4, 1), "부산은행": (3, 4, 4, 2), "신협": (3, 3, 6)}


def account(rng: random.Random) -> tuple[str, str]:
    bank = rng.choice(list(ACCOUNT_LAYOUTS))
    groups = [_d(rng, n) for n in ACCOUNT_LAYOUTS[bank]]
    groups[0] = "3333" if bank == "카카오뱅크" else str(rng.randint(1, 9)) + groups[0][1:]
    return bank, _join(rng, groups, ["-", "-", "-", "-", "", " "])


def passport(rng: random.Random) -> str:
    letter = rng.choice("MMMMMSDO")
    if rng.random() < 0.5:
        return letter + _d(rng, 3) + rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") + _d(rng, 4)
    return letter + _d(rng, 8)


REGIONS = {"서울": "11", "부산": "12", "경기": "13", "강원": "14", "충북": "15", "충남": "16", "전북": "17",
           "전남": "18", "경북": "19", "경남": "20", "제주": "21", "대구": "22", "인천": "23", "광주": "24",
           "대전": "25", "울산": "26"}


def driver_license(rng: random.Random) -> str:
    region = rng.choice(list(REGIONS))
    year, serial, check = _d(rng, 2), _d(rng, 6), _d(rng, 2)
    if rng.random() < 0.35:
        return rng.choice([f"{region} {year}-{serial}-{check}", f"{region}{year}-{serial}-{check}"])
    return _join(rng, [REGIONS[region], year, serial, check], ["-", "-", "-", " ", ""])


def business_number(rng: random.Random) -> str:
    while True:
        body = str(rng.randint(101, 899)) + f"{rng.randint(1, 99):02d}" + f"{rng.randint(1, 9999):04d}"
        total = sum(int(c) * w for c, w in zip(body, (1, 3, 7, 1, 3, 7, 1, 3, 5), strict=True))
        number = body + str((10 - (total + int(body[8]) * 5 // 10) % 10) % 10)
        if stdnum_brn.is_valid(number):
            return _join(rng, [number[:3], number[3:5], number[5:]], ["-", "-", "-", "", " "])


def ip(rng: random.Random, v4: float = 0.65) -> str:
    if rng.random() < v4:
        octets = rng.choice([[192, 168], [10, rng.randint(0, 255)], [172, rng.randint(16, 31)],
                             [rng.randint(1, 223), rng.randint(0, 255)]])
        return ".".join(str(o) for o in octets + [rng.randint(0, 255), rng.randint(1, 254)])
    groups = [f"{rng.randrange(65536):x}" for _ in range(8)]
    return rng.choice([":".join(groups), f"2001:db8::{groups[0]}:{groups[1]}",
                       f"fe80::{':'.join(groups[:4])}", f"::ffff:192.0.2.{rng.randint(1, 254)}",
                       ":".join(f"{int(g, 16):04x}" for g in groups)])


NAMES = ["홍길동", "김민지", "이서연", "박지호", "최현우", "정수아", "강도현", "윤유나", "장지수", "임하준"]
# slot -> (gold kind, generator); {bank} and {name} are filler, not scored.
SLOTS = {
    "rrn": ("rrn", lambda rng: registration(rng, foreigner=False)),
    "frn": ("frn", lambda rng: registration(rng, foreigner=True)),
    "mobile": ("phone", mobile), "landline": ("phone", landline), "email": ("email", email),
    "card": ("card", card), "account": ("account", lambda rng: account(rng)[1]),
    "passport": ("passport", passport), "license": ("driver_license", driver_license),
    "brn": ("brn", business_number), "ip": ("ip", ip), "ip4": ("ip", lambda rng: ip(rng, v4=1.0)),
    "ip6": ("ip", lambda rng: ip(rng, v4=0.0)),
}
POSITIVE = {
    "rrn": ["제 주민등록번호는 {rrn}입니다.", "주민번호 {rrn} 으로 본인 확인 부탁드립니다.",
            "가입 신청서에 {name}, {rrn} 이렇게 적었어요.", "{name}님 주민등록번호: {rrn}",
            "생년월일 말고 주민번호 전체({rrn})를 보내라고 하더라고요.", "보험 청구하려면 {rrn} 이 번호가 필요하대요.",
            "본인확인을 위해 {rrn}을 입력하세요.", "아이 주민등록번호가 {rrn} 맞나요?",
            "어머니 주민번호는 {rrn}, 아버지는 {rrn}이에요."],
    "frn": ["외국인등록번호 {frn}로 통장 개설 가능한가요?", "제 외국인등록증 번호는 {frn}입니다.",
            "{name} 씨(외국인등록번호 {frn})의 체류 연장 신청", "등록번호 {frn} 확인 부탁드려요.",
            "Alien registration number: {frn}", "체류자격 변경 서류에 {frn} 기재했습니다.",
            "외국인 근로자 {name}, {frn}", "{frn} 이 번호로 건강보험 조회가 안 돼요."],
    "mobile": ["제 번호는 {mobile}이에요.", "연락처: {mobile}", "{mobile}로 문자 주세요.", "급하면 {mobile} 여기로 전화해.",
               "택배 기사님 번호 {mobile} 맞죠?", "{name} 팀장 핸드폰 {mobile}", "번호 바뀌었어 {mobile}",
               "문의는 {mobile} ({name})", "H.P {mobile}", "Tel. {mobile}", "{mobile}", "저녁에 {mobile}로 연락 줘"],
    "landline": ["사무실 전화는 {landline}입니다.", "{name} 과장 직통 {landline}", "집 전화 {landline}",
                 "T. {landline} / F. {landline}", "문의: {landline} (평일 9시~18시)", "{landline}로 예약했어요."],
    "email": ["메일 주소는 {email}입니다.", "{email}로 원고 보내주세요.", "이메일: {email}", "문의사항은 <{email}>로",
              "mailto:{email}", "작가님 메일 {email} 맞나요?", "{name} ({email})", "보내는 사람: {email}",
              "{email}으로 계약서 전달드렸습니다."],
    "card": ["카드번호 {card} 유효기간 12/27", "결제 카드는 {card}입니다.", "신용카드 {card}로 할부 결제했어요.",
             "{card} 이 카드 분실 신고해주세요.", "체크카드 번호 {card}", "{name}님 카드({card}) 승인 완료",
             "Visa {card}", "이 번호 {card} 로 결제 부탁해"],
    "account": ["{bank} {account} 예금주 {name}", "입금 계좌: {bank} {account}", "{account} ({bank})로 보내주세요.",
                "환불은 {bank} {account}으로 부탁드려요.", "계좌번호 {account}로 송금했습니다.", "{name} {bank} {account}",
                "월세는 {bank} {account}에 이체하면 돼.", "후원 계좌 {account} {bank}", "통장 사본에 적힌 번호가 {account}예요."],
    "passport": ["여권번호 {passport}", "여권 번호는 {passport}입니다.", "Passport No. {passport}",
                 "비자 신청서에 여권번호 {passport} 적었어요.", "{name}님 여권({passport}) 만료일이 다가옵니다.",
                 "항공권 예약할 때 {passport} 입력했어요.", "출국 심사 때 {passport} 확인했습니다.",
                 "제 여권이 {passport}인데 재발급 받아야 하나요?"],
    "license": ["운전면허번호 {license}", "면허증 번호는 {license}입니다.", "렌터카 예약에 운전면허 {license} 등록",
                "{name} 운전면허: {license}", "면허번호 {license} 조회 부탁드립니다.", "운전면허증 {license} 분실했어요.",
                "{license} 면허로 렌트 가능한가요?"],
    "brn": ["사업자등록번호 {brn}", "사업자번호: {brn}", "상호: 창작출판 | 대표자: {name} | 사업자등록번호: {brn}",
            "세금계산서 발행용 사업자 번호 {brn}", "{brn} (주)창작미디어", "법인 사업자 {brn} 확인 부탁드립니다.",
            "거래처 {name}상회 {brn}"],
    "ip": ["서버 IP는 {ip}입니다.", "접속 로그에 {ip} 주소가 찍혔어요.", "{ip}에서 로그인 시도가 있었습니다.",
           "방화벽에 {ip} 허용해주세요.", "내 아이피 {ip}", "ssh deploy@{ip4}", "{ip4}:8080으로 접속하세요.",
           "http://{ip4}:3000 열어봐", "IPv6 주소 [{ip6}]:443"],
    "mixed": ["이름 {name} / 연락처 {mobile} / 이메일 {email}",
              "{name} 작가님 연락처 {mobile}, 메일 {email}, 원고료 입금 계좌 {bank} {account}",
              "주문자: {name}, 전화 {mobile}, 카드 {card}", "회원 정보: {name}, {rrn}, {mobile}",
              "사업자 {brn} 대표 {name} 전화 {landline}", "렌터카 계약서: {name}, 운전면허 {license}, 연락처 {mobile}",
              "출장자 {name}, 여권 {passport}, 비상연락 {mobile}", "접속 IP {ip4}, 계정 {email}"],
}


def _date(rng: random.Random) -> str:
    day = date(1980, 1, 1) + timedelta(days=rng.randrange(365 * 46))
    return day.strftime(rng.choice(["%Y-%m-%d", "%Y.%m.%d", "%Y/%m/%d", "%y.%m.%d", "%Y%m%d", "%Y. %m. %d."]))


def _price(rng: random.Random) -> str:
    amount = rng.choice([rng.randint(1, 99) * 100, rng.randint(1, 999) * 1000, rng.randint(1, 99999) * 1000])
    return f"{amount:,}" if rng.random() < 0.7 else str(amount)


def _order(rng: random.Random) -> str:
    day = (date(2019, 1, 1) + timedelta(days=rng.randrange(2500))).strftime("%Y%m%d")
    return rng.choice([_d(rng, rng.randint(10, 16)), f"{day}-{_d(rng, 7)}", day + _d(rng, rng.randint(4, 8)),
                       f"{day[:4]}-{day[4:]}-{_d(rng, 4)}", f"{_d(rng, 4)}-{_d(rng, 4)}-{_d(rng, 4)}"])


def _version(rng: random.Random) -> str:
    parts = [rng.randint(0, 20), rng.randint(0, 30), rng.randint(0, 99)]
    return ".".join(str(p) for p in parts + ([rng.randint(0, 255)] if rng.random() < 0.4 else []))


NEGATIVE = [
    lambda r: f"{r.randint(1950, 2025)}년에 개봉한 영화예요.",
    lambda r: f"{r.randint(1990, 2010)}년부터 {r.randint(2011, 2025)}년까지 연재했습니다.",
    lambda r: f"개봉일은 {_date(r)}입니다.",
    lambda r: f"{_date(r)}에 1권이 나왔어요.",
    lambda r: f"가격은 {_price(r)}원이에요.",
    lambda r: f"총 결제 금액 {_price(r)}원 (부가세 포함)",
    lambda r: f"주문번호 {_order(r)}",
    lambda r: f"주문번호: {_order(r)} 배송 준비 중입니다.",
    lambda r: f"입금 확인 후 주문번호 {_order(r)}로 발송됩니다.",
    lambda r: f"계좌 이체로 {_price(r)}원 결제했고 주문번호는 {_order(r)}입니다.",
    lambda r: f"운송장번호 {_d(r, 4)}-{_d(r, 4)}-{_d(r, 4)} (CJ대한통운)",
    lambda r: f"송장번호 {_d(r, 12)} 조회해 보세요.",
    lambda r: f"예약번호 {_order(r)}",
    lambda r: f"환불 요청 접수번호 {_order(r)}",
    lambda r: f"카드 결제 승인번호 {_d(r, 8)}, 금액 {_price(r)}원",
    lambda r: f"등기번호 {_d(r, 13)} 배달 완료",
    lambda r: f"버전 {_version(r)}으로 업데이트했어요.",
    lambda r: f"{_version(r)} 버전에서 버그가 고쳐졌습니다.",
    lambda r: f"서버 버전 {_version(r)}",
    lambda r: f"Python 3.{r.randint(8, 13)}.{r.randint(0, 9)} 사용",
    lambda r: f"점수는 {r.randint(0, 100)}.{r.randint(0, 9)}점",
    lambda r: f"{r.randint(0, 9)}:{r.randint(0, 9)}로 이겼다",
    lambda r: f"평점 {r.randint(1, 4)}.{r.randint(0, 9)}/5, 타율 0.{_d(r, 3)}",
    lambda r: f"{r.randint(0, 5)}-{r.randint(0, 5)} 승리",
    lambda r: f"오후 {r.randint(1, 12)}시 {r.randint(0, 59)}분에 만나요",
    lambda r: f"회의는 {r.randint(9, 18):02d}:{r.randint(0, 59):02d}:00부터",
    lambda r: f"키 {r.randint(150, 195)}cm, 몸무게 {r.randint(40, 99)}.{r.randint(0, 9)}kg",
    lambda r: f"해상도 {r.choice(['1920x1080', '2560x1440', '3840x2160'])}",
    lambda r: f"ISBN 978-89-{_d(r, 4)}-{_d(r, 3)}-{_d(r, 1)}",
    lambda r: f"고객센터 {r.choice(['1588', '1577', '1544', '1600', '1899'])}-{_d(r, 4)}로 문의하세요",
    lambda r: f"삼성전자(005930) 주가가 {_price(r)}원",
    lambda r: f"좌표 37.{_d(r, 4)}, 126.{_d(r, 4)}",
    lambda r: f"인구 {r.randint(1000000, 60000000):,}명",
    lambda r: f"조회수 {r.randint(10000, 99999999)}회",
    lambda r: f"{r.randint(1, 500)}쪽 {r.randint(1, 40)}번째 줄",
    lambda r: f"우편번호 {r.randint(1000, 63999):05d}",
    lambda r: f"모델명 SM-{r.choice('SGAF')}{_d(r, 3)}N",
    lambda r: f"KTX {_d(r, 3)}편 {r.randint(5, 23)}:{r.randint(0, 59):02d} 출발",
    lambda r: f"시즌 {r.randint(1, 9)} {r.randint(1, 24)}화까지 봤어요",
    lambda r: f"{r.randint(2000, 2023)}-{r.randint(2001, 2025)} 시즌",
    lambda r: f"제{r.randint(1, 99)}회 대회 상금 {_price(r)}원",
    lambda r: f"사업자 매출 {_price(r)}원 달성",
    lambda r: f"할인율 {r.randint(1, 90)}%, 적립 {r.randint(1, 9)}.{r.randint(0, 9)}%",
    lambda r: f"앱을 {_version(r)}으로 업데이트했어요.",
    lambda r: f"펌웨어 {_version(r)} 패치 노트",
    lambda r: f"바코드 880{_d(r, 10)}",
    lambda r: f"입금자명 {r.choice(NAMES)}, 입금액 {_price(r)}원",
    lambda r: f"영수증 {_date(r)} {r.randint(0, 23):02d}:{r.randint(0, 59):02d} 승인번호 {_d(r, 8)} 합계 {_price(r)}원",
    lambda r: f"타임스탬프 {r.randint(1_500_000_000, 1_800_000_000)}",
    lambda r: f"{r.randint(1, 9)}번 출구에서 봐요",
    lambda r: f"{_date(r)} {r.randint(0, 23):02d}:{r.randint(0, 59):02d}:00 서버 점검 예정",
    lambda r: f"수신자 부담 080-{_d(r, 3)}-{_d(r, 4)}",
]


def _render(rng: random.Random, template: str) -> Sample:
    bank, spelled_account = account(rng)
    parts, spans, pos, last = [], [], 0, 0
    for m in re.finditer(r"\{(\w+)\}", template):
        literal = template[last:m.start()]
        slot = m.group(1)
        value = {"name": rng.choice(NAMES), "bank": bank, "account": spelled_account}.get(slot)
        if value is None:
            value = SLOTS[slot][1](rng)
        pos += len(literal)
        if slot in SLOTS:
            spans.append((SLOTS[slot][0], pos, pos + len(value)))
        parts += [literal, value]
        pos += len(value)
        last = m.end()
    parts.append(template[last:])
    return Sample("".join(parts), tuple(spans))


def corpus(seed: int = 2024, positives: int = 1300, negatives: int = 700) -> list[Sample]:
    """``positives`` sentences with PII (every slot kind in turn, mixed ones among them) and
    ``negatives`` without, shuffled; the same seed gives the same corpus."""
    rng = random.Random(seed)
    groups = list(POSITIVE)
    samples = [_render(rng, rng.choice(POSITIVE[groups[i % len(groups)]])) for i in range(positives)]
    samples += [Sample(rng.choice(NEGATIVE)(rng), ()) for _ in range(negatives)]
    rng.shuffle(samples)
    return samples
